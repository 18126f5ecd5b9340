"""`vitkit serve` under hostile clients, each attack bounded and on loopback only.

Real uvicorn processes, raw sockets for clients that misbehave on purpose:

1. slow uploaders do not lock normal clients out, and are cut off (408) after the grace period;
2. peak RSS under concurrent maximum-size uploads stays under ``ServeSettings.memory_bound``;
3. slow upstreams do not delay a good image URL, and are cut off by the minimum rate;
4. a client hanging up mid-upload is one log line and a 499 in /metrics, never a 500;
5. invented HTTP methods add no metric series.

The full-size figures (70 slow connections, 8 x 25 MP, 16 slow upstreams) come from
benchmarks/hostile_load.py; these are the same attacks, smaller.
"""

from __future__ import annotations

import contextlib
import io
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from test_serve_process import MAX_IMAGE_BYTES, Server
from test_serve_support import image_server, photo_bytes, save_tiny_checkpoint
from vitkit.serve.settings import WORST_BYTES_PER_PIXEL, ServeSettings

RATE = 2000  # --min-transfer-rate in these tests: bytes/s, after the 5 s grace period


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("hostile-tiny")
    save_tiny_checkpoint(directory)
    return directory


@pytest.fixture(scope="module")
def server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("logs") / "hostile.log"
    with Server(
        checkpoint, log,
        "--max-queue", "8",
        "--allow-host", "127.0.0.1",
        "--fetch-timeout", "10",
        "--min-transfer-rate", str(RATE),
        "--decode-workers", "4",
        "--log-level", "info",
    ) as running:  # fmt: skip
        yield running


def raw_upload(port: int, declared: int = 100_000) -> socket.socket:
    """A connection that has sent its headers and no body yet."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=15)
    connection.sendall(
        b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
        + f"Content-Length: {declared}\r\n\r\n".encode()
    )
    return connection


def trickle(connection: socket.socket, stop: threading.Event, pause: float = 0.25) -> None:
    with contextlib.suppress(OSError):
        while not stop.is_set():
            connection.sendall(b"\xff")
            time.sleep(pause)


def answer_of(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    with contextlib.suppress(OSError):
        while chunk := connection.recv(65536):
            received += chunk
    return received


def counter(metrics: str, **labels: str) -> float:
    """The sum of vitkit_http_requests_total over series carrying these labels."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("vitkit_http_requests_total{") and all(
            f'{key}="{value}"' in line for key, value in labels.items()
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ---- 1. slow uploaders ---------------------------------------------------------------------------
def test_slow_uploaders_neither_lock_out_clients_nor_stay(server: Server) -> None:
    """12 connections trickling 4 bytes/s (more than --max-queue 8): normal requests answer at once;
    after the 5 s grace period each slow one gets a 408 and its connection is closed."""
    stop = threading.Event()
    slow = [raw_upload(server.port) for _ in range(12)]
    threads = [threading.Thread(target=trickle, args=(c, stop), daemon=True) for c in slow]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1)  # all twelve are reading bodies
        photo = photo_bytes()
        for _ in range(5):
            begin = time.monotonic()
            response = server.client.post("/v1/predict", content=photo)
            assert response.status_code == 200, response.text
            assert time.monotonic() - begin < 3
        begin = time.monotonic()
        with ThreadPoolExecutor(len(slow)) as pool:
            answers = list(pool.map(answer_of, slow))
        assert time.monotonic() - begin < 8  # cut off by the rate, not the 60 s upload timeout
    finally:
        stop.set()
        for connection in slow:
            connection.close()
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b'"error":"upload_too_slow"' in answer and b"connection: close" in answer.lower()
    assert server.alive()


# ---- 2. memory under maximum-size uploads --------------------------------------------------------
def rss_mb(pid: int, field: str) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", status, re.M)
    assert match, status
    return int(match.group(1)) / 1024


def sixteen_bit_png(side: int) -> bytes:
    """A 16-bit grey PNG: the costliest format per pixel measured (22 B/px while decoding)."""
    ramp = (np.arange(side * side, dtype=np.uint32) % 65536).astype(np.uint16).reshape(side, side)
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    return buffer.getvalue()


def test_peak_rss_stays_under_the_stated_bound(server: Server) -> None:
    """8 concurrent uploads of the largest image the caps let in (--max-pixels 4,000,000 as a
    16-bit PNG) and a chunked body 20x over the byte cap: the peak RSS over idle stays under
    ServeSettings.memory_bound for these settings (four decode threads, no pixel budget, would
    need ~350 MB)."""
    settings = ServeSettings(
        max_image_bytes=MAX_IMAGE_BYTES, max_pixels=4_000_000, decode_workers=4
    )
    image = sixteen_bit_png(2000)
    assert len(image) < MAX_IMAGE_BYTES
    pid = server.process.pid
    server.client.post("/v1/predict", content=image)  # first use: allocator and threads warm
    idle = rss_mb(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM starts again from here
    with ThreadPoolExecutor(8) as pool:
        statuses = list(
            pool.map(
                lambda _: server.client.post("/v1/predict", content=image).status_code, range(8)
            )
        )
    assert statuses == [200] * 8

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams
        for _ in range(100):
            yield b"\x00" * 65536

    with contextlib.suppress(httpx.HTTPError):  # the server may close before reading it all
        response = server.client.post("/v1/predict", content=chunks())
        assert response.status_code == 413
    peak = rss_mb(pid, "VmHWM") - idle
    bound = settings.memory_bound() / 2**20
    assert peak < bound, f"peak {peak:.0f} MB over idle, bound {bound:.0f} MB"
    assert 2 * WORST_BYTES_PER_PIXEL * 4_000_000 / 2**20 < bound < 300


# ---- 3. slow upstreams -----------------------------------------------------------------------------
class _Trickle(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        with contextlib.suppress(OSError):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            for _ in range(40):  # 2 bytes/s for at most 20 s
                self.wfile.write(b"\xff")
                self.wfile.flush()
                time.sleep(0.5)


@contextmanager
def trickling_host() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_slow_upstreams_do_not_delay_a_good_url(server: Server) -> None:
    """16 image URLs of a host sending 2 bytes/s are in flight; a good URL (another host)
    answers at once, and the slow ones end as 504 once under the minimum rate."""
    with trickling_host() as slow_host, image_server(photo_bytes("coffee")) as good_host:

        def get(url: str) -> tuple[int, float]:
            begin = time.monotonic()
            with httpx.Client(base_url=server.url, timeout=30, trust_env=False) as client:
                response = client.get("/predict_image_class", params={"image_url": url})
            return response.status_code, time.monotonic() - begin

        with ThreadPoolExecutor(16) as pool:
            slow = [pool.submit(get, f"{slow_host}/x{i}.jpg") for i in range(16)]
            time.sleep(1)
            for _ in range(3):
                status, seconds = get(f"{good_host}/image.jpg")
                assert status == 200 and seconds < 3, (status, seconds)
            results = [future.result() for future in slow]
    assert {status for status, _ in results} == {504}
    assert max(seconds for _, seconds in results) < 10  # 5 s grace, not the 30 s total deadline


# ---- 4. clients hanging up --------------------------------------------------------------------------
def test_a_client_hanging_up_is_one_log_line_and_a_499(server: Server) -> None:
    before = server.log.read_text().splitlines()
    metrics_before = server.client.get("/metrics").text
    for _ in range(5):
        connection = raw_upload(server.port)
        connection.sendall(b"\xff" * 3000)
        time.sleep(0.1)
        connection.close()
    time.sleep(1.5)  # the server notices each hang-up
    log = server.log.read_text().splitlines()[len(before) :]
    hangups = [line for line in log if "client hung up" in line]
    assert len(hangups) == 5, log
    assert not [line for line in log if "Traceback" in line or "ERROR" in line], log
    metrics = server.client.get("/metrics").text
    assert counter(metrics, status="499") - counter(metrics_before, status="499") == 5
    assert counter(metrics, status="500") == 0


# ---- 5. bounded metric labels --------------------------------------------------------------------
def test_invented_methods_add_no_metric_series(server: Server) -> None:
    def series() -> set[str]:
        text = server.client.get("/metrics").text
        return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line.startswith("vitkit_")}

    server.client.request("BREW", "/v1/predict")  # the first one may add "other"
    before = series()
    for i in range(40):
        response = server.client.request(f"X{i:03d}", "/v1/predict")
        assert response.status_code == 405
        assert set(response.headers["allow"].split(", ")) == {"POST"}
    added = series() - before
    assert not added, added
    assert 'method="other"' in server.client.get("/metrics").text
