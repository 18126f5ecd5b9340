"""`vitkit serve` as a real uvicorn process on loopback, driven by a real HTTP client (httpx).

Two servers: a "public" one with the default fetch policy (only public addresses: every
loopback/private URL must be refused) and an "internal" one started with --allow-host 127.0.0.1
so it can fetch from the local image server in the seed-style test. Non-loopback addresses
(10.0.0.1, 169.254.169.254) appear only as literals refused before any connection is made.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from PIL import Image

from test_serve_support import (
    LABELS,
    free_port,
    image_server,
    photo_bytes,
    png_bomb,
    save_tiny_checkpoint,
    silent_server,
)

MAX_IMAGE_BYTES = 300_000


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("serve-process-tiny")
    save_tiny_checkpoint(directory)
    return directory


_ServerT = TypeVar("_ServerT", bound="Server")


class Server:
    def __init__(self, checkpoint: Path, log: Path, *options: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [sys.executable, "-m", "vitkit", "serve", "--model", str(checkpoint)]
        command += ["--port", str(self.port), "--device", "cpu", "--log-level", "warning"]
        command += ["--max-image-bytes", str(MAX_IMAGE_BYTES), "--max-pixels", "4000000", *options]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        with open(log, "wb") as sink:
            self.process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
        self.client = httpx.Client(base_url=self.url, timeout=30, trust_env=False)

    def wait_ready(self, seconds: float = 90) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.log.read_text()}")
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not ready in {seconds} s: {self.log.read_text()}")

    def alive(self) -> bool:
        return self.process.poll() is None and self.client.get("/healthz").json() == {
            "status": "ok"
        }

    def __enter__(self: _ServerT) -> _ServerT:
        try:
            self.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.fixture(scope="module")
def public(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("logs") / "public.log"
    with Server(checkpoint, log, "--fetch-timeout", "1") as server:
        yield server


@pytest.fixture(scope="module")
def internal(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with Server(
        checkpoint,
        tmp_path_factory.mktemp("logs") / "internal.log",
        "--allow-host", "127.0.0.1",
        "--max-queue", "2",
        "--request-timeout", "4",
        "--fetch-timeout", "1",
    ) as server:  # fmt: skip
        yield server


@pytest.fixture(scope="module")
def images() -> Iterator[str]:
    with image_server(photo_bytes("chelsea")) as base:
        yield base


def check(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    if code is not None:
        assert body["error"] == code, body
        assert body["detail"]
    return body


# ---- the seed-style client -------------------------------------------------------------------
def test_seed_style_get_with_a_locally_served_image(internal: Server, images: str) -> None:
    answer = check(
        internal.client.get("/predict_image_class", params={"image_url": f"{images}/image.jpg"}),
        200,
    )
    assert answer["predicted_class"] in LABELS
    assert answer["predicted_class"] == answer["predictions"][0]["label"]
    assert len(answer["predictions"]) == 5
    upload = internal.client.post(
        "/predict_image_class",
        files={"image": ("chelsea.jpg", photo_bytes("chelsea"), "image/jpeg")},
    )
    assert check(upload, 200) == answer  # same bytes by URL or by upload: same answer
    metrics = internal.client.get("/metrics").text
    assert 'route="/predict_image_class",status="200"' in metrics


def test_explain_over_real_http(public: Server) -> None:
    """One attention map over real HTTP: patch grid, sums to one, an overlay of the image's shape."""
    answer = check(
        public.client.post(
            "/v1/explain?method=rollout&top_k=3",
            files={"image": ("chelsea.jpg", photo_bytes("chelsea", size=96), "image/jpeg")},
        ),
        200,
    )
    config = public.client.get("/v1/model").json()["config"]
    side = config["image_size"] // config["patch_size"]
    assert answer["grid"] == [side, side] and len(answer["attention_map"]) == side
    assert all(len(row) == side for row in answer["attention_map"])
    assert sum(map(sum, answer["attention_map"])) == pytest.approx(1.0, abs=1e-4)
    assert len(answer["predictions"]) == 3 and answer["predictions"][0]["label"] in LABELS
    overlay = Image.open(io.BytesIO(base64.b64decode(answer["overlay_png_base64"])))
    overlay.load()
    assert overlay.format == "PNG" and overlay.width / overlay.height == pytest.approx(1.5, 0.02)
    check(public.client.post("/v1/explain", content=b"not an image" * 10), 415, "unsupported_image")
    assert 'route="/v1/explain",status="200"' in public.client.get("/metrics").text
    assert public.alive()


# ---- hostile URLs: refused before any connection ----------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/image.jpg",
        "http://localhost:{port}/image.jpg",
        "http://[::1]:{port}/image.jpg",
        "http://10.0.0.1/image.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://0.0.0.0:{port}/image.jpg",
        "http://[::ffff:127.0.0.1]:{port}/image.jpg",
        "http://2130706433:{port}/image.jpg",
        "http://0x7f000001:{port}/image.jpg",
        "file:///etc/passwd",
        "ftp://127.0.0.1/image.jpg",
        "gopher://127.0.0.1:70/",
        "not a url at all",
    ],
)
def test_hostile_urls_are_refused(public: Server, images: str, url: str) -> None:
    port = images.rsplit(":", 1)[1]
    response = public.client.get(
        "/predict_image_class", params={"image_url": url.format(port=port)}
    )
    body = check(response, 400)
    assert body["error"] in ("url_not_allowed", "bad_url")
    assert public.alive()


@pytest.mark.parametrize(
    "target",
    ["http://10.0.0.1/x.jpg", "http://169.254.169.254/", "http://localhost:{port}/image.jpg"],
)
def test_redirect_from_allowed_host_to_private_host(
    internal: Server, images: str, target: str
) -> None:
    port = images.rsplit(":", 1)[1]
    url = f"{images}/redirect?to={target.format(port=port)}"
    check(
        internal.client.get("/predict_image_class", params={"image_url": url}),
        400,
        "url_not_allowed",
    )
    assert internal.alive()


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/forever", 413, "upstream_too_large"),  # sends forever: stopped at the byte cap
        ("/big", 413, "upstream_too_large"),  # declares 1 TB
        ("/trickle", 504, "upstream_timeout"),  # one byte per 0.1 s: the total deadline
        ("/missing", 502, "upstream_error"),
    ],
)
def test_hostile_upstreams(
    internal: Server, images: str, path: str, status: int, code: str
) -> None:
    start = time.monotonic()
    check(
        internal.client.get("/predict_image_class", params={"image_url": images + path}),
        status,
        code,
    )
    assert time.monotonic() - start < 10
    assert internal.alive()


def test_upstream_that_never_answers(internal: Server) -> None:
    with silent_server() as base:
        response = internal.client.get(
            "/predict_image_class", params={"image_url": f"{base}/x.jpg"}
        )
    check(response, 504, "upstream_timeout")
    assert internal.alive()


# ---- hostile bodies ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "body", "status", "code"),
    [
        ("png bomb 30000x30000", png_bomb(), 413, "image_too_large"),
        ("truncated jpeg", photo_bytes("coffee")[:900], 400, "bad_image"),
        ("text file", b"just some text, not an image\n" * 20, 415, "unsupported_image"),
        ("empty body", b"", 400, "bad_request"),
        (
            "over the cap",
            b"\xff\xd8\xff" + b"\x00" * (MAX_IMAGE_BYTES + 10),
            413,
            "request_too_large",
        ),
    ],
)
def test_hostile_uploads(public: Server, name: str, body: bytes, status: int, code: str) -> None:
    raw = public.client.post("/v1/predict", content=body, headers={"content-type": "image/jpeg"})
    check(raw, status, code)
    multipart = public.client.post(
        "/predict_image_class", files={"image": ("x.jpg", body, "image/jpeg")}
    )
    check(multipart, status, code)
    assert public.alive()


def test_declared_and_streamed_bodies_over_the_request_cap(public: Server) -> None:
    huge = 20 * MAX_IMAGE_BYTES  # over max-image-bytes x 16 files
    declared = public.client.post(
        "/v1/predict", content=b"\x00" * huge, headers={"content-type": "image/jpeg"}
    )
    check(declared, 413, "request_too_large")

    def chunks() -> Iterator[bytes]:  # chunked: no Content-Length, counted while streaming
        for _ in range(200):
            yield b"\x00" * 65536

    streamed = public.client.post("/v1/predict", content=chunks())
    check(streamed, 413, "request_too_large")
    assert public.alive()


# ---- load shedding --------------------------------------------------------------------------
def trickled(
    data: bytes, pieces: int = 8, pause: float = 0.25, started: threading.Event | None = None
) -> Iterator[bytes]:
    """An upload that keeps its request in flight for about pieces x pause seconds."""
    size = len(data) // pieces + 1
    for start in range(0, len(data), size):
        yield data[start : start + size]
        if started is not None:
            started.set()
        time.sleep(pause)


def test_slow_uploads_hold_no_queue_slot(internal: Server) -> None:
    """--max-queue 2, three uploads trickling in (~3 s each): a request whose body has arrived
    is answered at once (the queue counts only requests whose body has arrived), then the slow
    ones are answered once theirs has (503 + Retry-After for any past the queue bound)."""
    data = photo_bytes()
    results: list[httpx.Response] = []
    started = [threading.Event() for _ in range(3)]

    def call(event: threading.Event) -> None:
        with httpx.Client(base_url=internal.url, timeout=30, trust_env=False) as client:
            upload = trickled(data, pieces=12, started=event)  # in flight for ~3 s
            results.append(client.post("/v1/predict", content=upload))

    threads = [threading.Thread(target=call, args=(event,)) for event in started]
    for thread in threads:
        thread.start()
    assert all(event.wait(10) for event in started)
    time.sleep(0.5)  # let the server reach all three handlers
    begin = time.monotonic()
    check(internal.client.post("/v1/predict", content=data), 200)
    assert time.monotonic() - begin < 2  # not behind the slow bodies
    assert not results  # they are still arriving
    for thread in threads:
        thread.join()
    # Their bodies end together: admitted then, past --max-queue 2 one may be shed (503).
    statuses = sorted(r.status_code for r in results)
    assert statuses[0] == 200 and set(statuses) <= {200, 503}, statuses
    for response in results:
        if response.status_code == 503:
            check(response, 503, "overloaded")
            assert response.headers["retry-after"] == "1"
    assert internal.alive()


# ---- graceful shutdown ----------------------------------------------------------------------
def test_sigterm_finishes_the_request_in_flight(checkpoint: Path, tmp_path: Path) -> None:
    with Server(checkpoint, tmp_path / "sigterm.log") as server:
        sent = threading.Event()
        upload = trickled(photo_bytes("astronaut"), started=sent)  # in flight for ~2 s
        result: list[httpx.Response] = []
        thread = threading.Thread(
            target=lambda: result.append(server.client.post("/v1/predict", content=upload))
        )
        thread.start()
        assert sent.wait(10)
        time.sleep(0.5)  # the server has accepted the connection and started the handler
        server.process.send_signal(signal.SIGTERM)
        thread.join(30)
        assert result and result[0].status_code == 200, result and result[0].text
        assert result[0].json()[0][0]["label"] in LABELS
        # uvicorn re-raises the captured SIGTERM once shut down: "terminated by SIGTERM" is the
        # normal end (as for any daemon); a crash would be another code or a traceback.
        assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "Traceback" not in server.log.read_text()
