"""Hostile load against `vitkit serve` on loopback: five attacks, each measured.

Starts ``vitkit serve`` as a subprocess on 127.0.0.1 with a tiny random model (2-layer ViT-Ti at
224, 1000 labels) and runs one scenario against it; every scenario is bounded in time and stops
by itself. Each prints one JSON line with its figure:

- ``slow-uploaders``: 70 connections send a raw body at 1 byte/s while one normal client posts a
  real photo in a loop: the normal client's answers (ok / 503 / other) and p50/p99 latency.
- ``upload-memory``: 8 concurrent uploads of the largest image the caps let in (a white PNG of
  the serving default pixel cap), then one 100 MB chunked body: the server's peak RSS
  (VmHWM) over its idle RSS.
- ``slow-upstreams``: 16 URL predictions of a local host that trickles 1 byte/s, then a good URL
  (a real photo from another local host: another port) timed while they hang: its latency.
- ``disconnects``: 20 clients hang up mid-upload: the server's log lines per disconnect and the
  500s its /metrics counts.
- ``metric-labels``: two rounds of 200 requests with invented HTTP methods: the series /metrics
  gains in each (the first round may add the route's own series once).

    python benchmarks/hostile_load.py --scenario all
    python benchmarks/hostile_load.py --scenario slow-uploaders --duration 15
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np

from results_io import write_results

LOOPBACK = "127.0.0.1"
SCENARIOS = ("slow-uploaders", "upload-memory", "slow-upstreams", "disconnects", "metric-labels")


def build_checkpoint(directory: Path) -> Path:
    import torch

    from vitkit.checkpoints import imagenet_labels, save_pretrained
    from vitkit.images.processor import ImageProcessor
    from vitkit.models.config import preset
    from vitkit.models.vit import ViT

    torch.manual_seed(0)
    config = preset(
        "vit-tiny-patch16-224", num_hidden_layers=2, id2label=dict(enumerate(imagenet_labels()))
    )
    save_pretrained(ViT(config).eval(), directory, ImageProcessor.for_config(config).to_dict())
    return directory


def photo_jpeg() -> bytes:
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


class Server:
    """`vitkit serve` on loopback; its log goes to a file so scenarios can count lines."""

    def __init__(self, model: Path, log: Path, *options: str) -> None:
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.log = log
        command = [sys.executable, "-m", "vitkit", "serve", "--model", str(model)]
        command += ["--host", LOOPBACK, "--port", str(self.port), "--device", "cpu", *options]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        with open(log, "wb") as sink:
            self.process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)

    def __enter__(self) -> Server:
        end = time.monotonic() + 120
        with httpx.Client(trust_env=False, timeout=5) as client:
            while time.monotonic() < end:
                if self.process.poll() is not None:
                    raise SystemExit(f"server exited: {self.log.read_text()[-2000:]}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"{self.url}/readyz").status_code == 200:
                        return self
                time.sleep(0.2)
        self.__exit__()
        raise SystemExit("server not ready in 120 s")

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def rss_mb(self, field: str = "VmRSS") -> float:
        """The server's resident memory (VmRSS) or its peak so far (VmHWM), in MB."""
        text = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
        return int(match.group(1)) / 1024 if match else float("nan")

    def reset_peak(self) -> None:
        """Start VmHWM afresh from the current RSS (Linux: write 5 to clear_refs)."""
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", trust_env=False, timeout=10).text


async def raw_request(
    port: int, head: bytes, body_pieces: Iterator[bytes], pause: float, until: float
) -> None:
    """Send ``head`` then the pieces, one every ``pause`` s, until ``until``; then hang up."""
    with contextlib.suppress(OSError, asyncio.TimeoutError):
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.write(head)
        await writer.drain()
        for piece in body_pieces:
            if time.monotonic() > until or reader.at_eof():
                break
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(pause)
        writer.close()


def percentile_ms(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.array(values) * 1000, q)), 1) if values else None


# ---- 1. slow uploaders ---------------------------------------------------------------------------
async def slow_uploaders(server: Server, slow: int, duration: float, photo: bytes) -> dict:
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: {LOOPBACK}\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: 100000\r\n\r\n"
    ).encode()
    until = time.monotonic() + duration + 2
    attackers = [
        asyncio.create_task(raw_request(server.port, head, iter([b"\xff"] * 100000), 1.0, until))
        for _ in range(slow)
    ]
    await asyncio.sleep(2)  # the slow bodies are all under way
    latencies, statuses = [], {}  # type: ignore[var-annotated]
    stop_at = time.monotonic() + duration
    async with httpx.AsyncClient(base_url=server.url, timeout=40, trust_env=False) as client:
        while time.monotonic() < stop_at:
            start = time.perf_counter()
            try:
                status = (await client.post("/v1/predict", content=photo)).status_code
            except httpx.HTTPError as error:
                status = type(error).__name__
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if status == 200:
                latencies.append(time.perf_counter() - start)
            else:
                await asyncio.sleep(0.05)  # a 503 comes back at once: do not spin
    for task in attackers:
        task.cancel()
    await asyncio.gather(*attackers, return_exceptions=True)
    total = sum(statuses.values())
    return {
        "scenario": "slow-uploaders",
        "slow_connections": slow,
        "normal_requests": total,
        "statuses": statuses,
        "ok_fraction": round(statuses.get("200", 0) / total, 3) if total else 0.0,
        "p50_ok_ms": percentile_ms(latencies, 50),
        "p99_ok_ms": percentile_ms(latencies, 99),
    }


# ---- 2. upload memory ------------------------------------------------------------------------------
def serving_pixel_cap() -> int:
    try:  # the serving default, where it exists (chosen by measured memory)
        from vitkit.serve.settings import DEFAULT_MAX_PIXELS as cap
    except ImportError:
        from vitkit.images.decode import DEFAULT_MAX_PIXELS as cap
    return int(cap)


def white_png(pixels: int, cache: Path) -> bytes:
    """A white RGB PNG of about ``pixels`` pixels (square): tiny on the wire, huge decoded."""
    side = math.isqrt(pixels)
    path = cache / f"white-{side}.png"
    if not path.exists():
        from PIL import Image

        Image.new("RGB", (side, side), (255, 255, 255)).save(path, format="PNG")
    return path.read_bytes()


async def upload_memory(server: Server, png: bytes, side: int, uploads: int) -> dict:
    """One 100 MB chunked body first (on the idle server), then ``uploads`` max-size images."""
    time.sleep(1)
    idle = server.rss_mb()
    server.reset_peak()

    async def hundred_mb() -> AsyncIterator[bytes]:  # chunked: no Content-Length to refuse early
        block = b"\x00" * (1 << 20)
        for _ in range(100):
            yield block

    async with httpx.AsyncClient(base_url=server.url, timeout=120, trust_env=False) as client:
        try:
            big: int | str = (await client.post("/v1/predict", content=hundred_mb())).status_code
        except httpx.HTTPError as error:
            big = type(error).__name__
        peak_big = server.rss_mb("VmHWM")
        before_images = server.rss_mb()
        server.reset_peak()
        started = time.perf_counter()
        answers = await asyncio.gather(
            *(
                client.post("/v1/predict", content=png, headers={"content-type": "image/png"})
                for _ in range(uploads)
            ),
            return_exceptions=True,
        )
        elapsed = time.perf_counter() - started
        peak_images = server.rss_mb("VmHWM")
        after_images = server.rss_mb()
    return {
        "scenario": "upload-memory",
        "idle_rss_mb": round(idle),
        "body_100mb_status": big,
        "body_100mb_peak_over_idle_mb": round(peak_big - idle),
        "body_100mb_rss_kept_mb": round(before_images - idle),
        "image": f"white PNG {side}x{side} px, {len(png):,} bytes",
        "uploads": uploads,
        "statuses": [getattr(a, "status_code", type(a).__name__) for a in answers],
        "seconds": round(elapsed, 2),
        "peak_rss_mb": round(peak_images),
        "peak_over_idle_mb": round(peak_images - idle),
        "rss_after_mb": round(after_images),
    }


# ---- 3. slow upstreams -----------------------------------------------------------------------------
class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    image = b""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        with contextlib.suppress(OSError):
            if self.path.startswith("/trickle"):
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", "100000")
                self.end_headers()
                for _ in range(60):  # 1 byte/s for at most a minute
                    self.wfile.write(b"\xff")
                    self.wfile.flush()
                    time.sleep(1)
            else:
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(self.image)))
                self.end_headers()
                self.wfile.write(self.image)


@contextlib.contextmanager
def upstream(photo: bytes) -> Iterator[str]:
    handler = type("Handler", (_Upstream,), {"image": photo})
    httpd = ThreadingHTTPServer((LOOPBACK, 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://{LOOPBACK}:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


async def slow_upstreams(
    server: Server, slow_base: str, good_base: str, slow: int, probes: int
) -> dict:
    """One good URL first (warm), then ``slow`` hanging fetches, then the good URL again."""

    async def get(client: httpx.AsyncClient, url: str) -> tuple[int | str, float]:
        start = time.perf_counter()
        try:
            response = await client.get("/predict_image_class", params={"image_url": url})
            status: int | str = response.status_code
        except httpx.HTTPError as error:
            status = type(error).__name__
        return status, time.perf_counter() - start

    def client() -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=server.url, timeout=45, trust_env=False)

    async with client() as attacker, client() as prober:
        warm = await get(prober, f"{good_base}/image.jpg")
        hanging = [
            asyncio.create_task(get(attacker, f"{slow_base}/trickle?{i}")) for i in range(slow)
        ]
        await asyncio.sleep(1)  # they have all started fetching
        good = [await get(prober, f"{good_base}/image.jpg") for _ in range(probes)]
        slow_results = await asyncio.gather(*hanging)
    latencies = [seconds for status, seconds in good if status == 200]
    return {
        "scenario": "slow-upstreams",
        "slow_fetches": slow,
        "good_alone_ms": round(warm[1] * 1000, 1),
        "good_statuses": [status for status, _ in good],
        "good_ms": [round(seconds * 1000) for _, seconds in good],
        "good_p50_ms": percentile_ms(latencies, 50),
        "good_max_ms": round(max(s for _, s in good) * 1000, 1),
        "slow_statuses": sorted({str(status) for status, _ in slow_results}),
        "slow_seconds_max": round(max((s for _, s in slow_results), default=0.0), 1),
    }


# ---- 4. disconnects and 5. metric labels -------------------------------------------------------
def count_500s(metrics: str) -> int:
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in metrics.splitlines()
        if line.startswith("vitkit_http_requests_total{") and 'status="500"' in line
    )


async def disconnects(server: Server, clients: int) -> dict:
    lines_before = len(server.log.read_text().splitlines())
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: {LOOPBACK}\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: 100000\r\n\r\n"
    ).encode()
    until = time.monotonic() + 1.0
    await asyncio.gather(
        *(
            raw_request(server.port, head, iter([b"\xff" * 1000] * 5), 0.1, until)
            for _ in range(clients)
        )
    )
    await asyncio.sleep(2)  # the server notices and logs
    log = server.log.read_text().splitlines()[lines_before:]
    return {
        "scenario": "disconnects",
        "clients": clients,
        "log_lines": len(log),
        "log_lines_per_disconnect": round(len(log) / clients, 1),
        "tracebacks": sum("Traceback" in line for line in log),
        "counted_as_500": count_500s(server.metrics()),
        "sample": log[:3],
    }


def metric_series(metrics: str) -> int:
    return sum(1 for line in metrics.splitlines() if line and not line.startswith("#"))


async def metric_labels(server: Server, requests: int) -> dict:
    """Two rounds of ``requests`` invented methods: the series each round adds."""
    counts = [metric_series(server.metrics())]
    async with httpx.AsyncClient(base_url=server.url, timeout=10, trust_env=False) as client:
        for round_ in range(2):
            for i in range(requests):
                with contextlib.suppress(httpx.HTTPError):
                    await client.request(f"X{round_}{i:04d}", "/v1/predict")
            counts.append(metric_series(server.metrics()))
    return {
        "scenario": "metric-labels",
        "invented_methods_per_round": requests,
        "series_before": counts[0],
        "series_added_round_1": counts[1] - counts[0],
        "series_added_round_2": counts[2] - counts[1],
    }


# ---- driver ---------------------------------------------------------------------------------------
def run(scenario: str, model: Path, scratch: Path, args: argparse.Namespace) -> dict:
    log = scratch / f"{scenario}.log"
    photo = photo_jpeg()
    if scenario == "slow-uploaders":
        with Server(model, log, "--log-level", "warning") as server:
            return asyncio.run(slow_uploaders(server, args.slow, args.duration, photo))
    if scenario == "upload-memory":
        pixels = args.max_pixels or serving_pixel_cap()
        png = white_png(pixels, scratch)
        cap = ["--max-pixels", str(args.max_pixels)] if args.max_pixels else []
        with Server(model, log, "--log-level", "warning", *cap) as server:
            side = math.isqrt(pixels)
            return asyncio.run(upload_memory(server, png, side, args.uploads))
    if scenario == "slow-upstreams":
        with (  # two hosts (loopback, two ports): the slow one and a good one
            upstream(photo) as slow_base,
            upstream(photo) as good_base,
            Server(model, log, "--log-level", "warning", "--allow-host", LOOPBACK) as server,
        ):
            return asyncio.run(
                slow_upstreams(server, slow_base, good_base, args.slow_fetches, args.probes)
            )
    if scenario == "disconnects":
        with Server(model, log, "--log-level", "info") as server:
            return asyncio.run(disconnects(server, args.disconnects))
    with Server(model, log, "--log-level", "warning") as server:
        return asyncio.run(metric_labels(server, args.methods))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--model", type=Path, help="checkpoint (default: a tiny random ViT)")
    parser.add_argument("--slow", type=int, default=70, help="slow uploading connections")
    parser.add_argument("--duration", type=float, default=15.0, help="normal-client seconds")
    parser.add_argument("--uploads", type=int, default=8, help="concurrent max-size uploads")
    parser.add_argument(
        "--max-pixels",
        type=int,
        help="upload-memory: this --max-pixels and image (default: the cap)",
    )
    parser.add_argument("--slow-fetches", type=int, default=16)
    parser.add_argument("--probes", type=int, default=5, help="good-URL requests, one by one")
    parser.add_argument("--disconnects", type=int, default=20)
    parser.add_argument("--methods", type=int, default=200)
    args = parser.parse_args()
    scenarios = SCENARIOS if args.scenario == "all" else (args.scenario,)
    results = []
    with tempfile.TemporaryDirectory() as directory:
        scratch = Path(directory)
        model = args.model or build_checkpoint(scratch / "model")
        for scenario in scenarios:
            results.append({"scenario": scenario, **run(scenario, model, scratch, args)})
            print(json.dumps(results[-1]), flush=True)
    print(f"wrote {publish(results, args)}")
    return 0


def publish(results: list[dict], args: argparse.Namespace) -> Path:
    """benchmarks/results/serve_hostile.json: one row per attack, its measurements as text."""

    def measured(result: dict) -> str:
        return "; ".join(f"{key} {value}" for key, value in result.items() if key != "scenario")

    return write_results(
        "serve_hostile",
        title="`vitkit serve` under hostile clients",
        command="python benchmarks/hostile_load.py " + " ".join(sys.argv[1:]),
        summary={r["scenario"]: {k: v for k, v in r.items() if k != "scenario"} for r in results},
        rounds=results,
        table={
            "columns": ["attack", "measured"],
            "rows": [[r["scenario"], measured(r)] for r in results],
        },
        notes="Each attack once against a fresh `vitkit serve` on loopback (a single run: no "
        f"spread), {args.model or 'a tiny random ViT'}; see the script's docstring for each attack.",
    )


if __name__ == "__main__":
    sys.exit(main())
