"""Load test for `vitkit serve`: N concurrent clients on loopback for a fixed time.

Starts the server as a subprocess on 127.0.0.1 (never any other address), posts a real photo
(scikit-image's "chelsea", 451x300 JPEG) to /v1/predict from N concurrent async clients for
--duration seconds, then stops the server with SIGTERM. Reports throughput, p50/p95/p99 latency,
errors (must be 0) and the mean batch size the server formed (from its /metrics). With
--compare it runs twice at the same concurrency, dynamic batching vs --max-batch-size 1, and
reports the throughput gain. Bounded: every request has a timeout and the run stops by itself.

    # the recorded run: random-weights ViT-B/16-224, 16 clients, 60 s per setting
    python benchmarks/load_test.py --preset vit-base-patch16-224 --clients 16 --duration 60 --compare
    # a smoke run (a few seconds, tiny model)
    python benchmarks/load_test.py --preset vit-tiny-patch16-224 --clients 4 --duration 5 --compare
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np

from results_io import write_results

LOOPBACK = "127.0.0.1"


@dataclass
class RunResult:
    label: str
    clients: int
    max_batch_size: int
    max_batch_delay_ms: float
    duration_s: float
    requests: int
    errors: int
    throughput_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_batch_size: float


def build_checkpoint(preset_name: str, directory: Path) -> Path:
    """A random-weights ViT of ``preset_name`` with 1000 ImageNet labels, saved as an HF dir."""
    import torch

    from vitkit.checkpoints import imagenet_labels, save_pretrained
    from vitkit.images.processor import ImageProcessor
    from vitkit.models.config import preset
    from vitkit.models.vit import ViT

    torch.manual_seed(0)
    config = preset(preset_name, id2label=dict(enumerate(imagenet_labels())))
    processor = ImageProcessor.for_config(config).to_dict()
    save_pretrained(ViT(config).eval(), directory, processor)
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


class ServerProcess:
    def __init__(
        self,
        model: Path,
        max_batch_size: int,
        delay_ms: float,
        clients: int,
        device: str,
        decode_workers: int | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        command = [
            sys.executable, "-m", "vitkit", "serve",
            "--model", str(model),
            "--host", LOOPBACK,
            "--port", str(self.port),
            "--device", device,
            "--max-batch-size", str(max_batch_size),
            "--max-batch-delay-ms", str(delay_ms),
            "--max-queue", str(max(64, 4 * clients)),  # the test measures speed, not shedding
            "--request-timeout", "120",
            "--log-level", "warning",
        ]  # fmt: skip
        if decode_workers:
            command += ["--decode-workers", str(decode_workers)]
        self.process = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1"})

    def wait_ready(self, seconds: float = 300) -> None:
        end = time.monotonic() + seconds
        with httpx.Client(trust_env=False, timeout=5) as client:
            while time.monotonic() < end:
                if self.process.poll() is not None:
                    raise SystemExit(f"server exited with {self.process.returncode}")
                try:
                    if client.get(f"{self.url}/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
        raise SystemExit(f"server not ready after {seconds} s")

    def batch_totals(self) -> tuple[float, float]:
        """(images, forward passes) so far, from the server's batch-size histogram."""
        text = httpx.get(f"{self.url}/metrics", trust_env=False).text
        images = re.search(r"^vitkit_batch_size_sum (\S+)$", text, re.M)
        passes = re.search(r"^vitkit_batch_size_count (\S+)$", text, re.M)
        return (
            float(images.group(1)) if images else 0.0,
            float(passes.group(1)) if passes else 0.0,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()


async def hammer(
    url: str, payload: bytes, clients: int, duration: float
) -> tuple[list[float], int, float]:
    """(latencies of successful requests in s, error count, elapsed s) for ``clients`` loops."""
    latencies: list[float] = []
    errors = 0
    stop_at = time.monotonic() + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.monotonic() < stop_at:
            start = time.perf_counter()
            try:
                response = await client.post(
                    "/v1/predict?top_k=5", content=payload, headers={"content-type": "image/jpeg"}
                )
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1

    began = time.monotonic()
    async with httpx.AsyncClient(
        base_url=url, timeout=120, limits=limits, trust_env=False
    ) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    return latencies, errors, time.monotonic() - began


def run_once(
    label: str, model: Path, args: argparse.Namespace, max_batch_size: int, payload: bytes
) -> RunResult:
    server = ServerProcess(
        model, max_batch_size, args.max_batch_delay_ms, args.clients, args.device
    )
    try:
        server.wait_ready()
        asyncio.run(hammer(server.url, payload, args.clients, min(3.0, args.duration)))  # warm-up
        images_before, passes_before = server.batch_totals()
        latencies, errors, elapsed = asyncio.run(
            hammer(server.url, payload, args.clients, args.duration)
        )
        images_after, passes_after = server.batch_totals()
        passes = passes_after - passes_before
        mean_batch = (images_after - images_before) / passes if passes else float("nan")
    finally:
        server.stop()
    ms = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    result = RunResult(
        label=label,
        clients=args.clients,
        max_batch_size=max_batch_size,
        max_batch_delay_ms=args.max_batch_delay_ms,
        duration_s=round(elapsed, 2),
        requests=len(latencies),
        errors=errors,
        throughput_rps=round(len(latencies) / elapsed, 3),
        p50_ms=round(float(np.percentile(ms, 50)), 1),
        p95_ms=round(float(np.percentile(ms, 95)), 1),
        p99_ms=round(float(np.percentile(ms, 99)), 1),
        mean_batch_size=round(mean_batch, 2),
    )
    print(json.dumps(asdict(result)), flush=True)
    return result


def stage_timings(
    model: Path, payload: bytes, device: str, max_batch_size: int
) -> dict[str, float]:
    """Milliseconds per stage, in this process: where a request's time goes on this machine."""
    import torch

    from vitkit.images.decode import load_image
    from vitkit.inference.classifier import load

    classifier = load(model, device=device, threads="auto")  # as `vitkit serve` runs

    def best_of(function: object, repeats: int = 20) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            function()  # type: ignore[operator]
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return round(1000 * float(np.median(times)), 2)

    image = load_image(io.BytesIO(payload))
    pixels = classifier.prepare([image])
    timings = {
        "decode_ms": best_of(lambda: load_image(io.BytesIO(payload))),
        "preprocess_ms": best_of(lambda: classifier.prepare([image])),
    }
    for size in sorted({1, max_batch_size}):
        batch = pixels.expand(size, *pixels.shape[1:]).contiguous()
        classifier.predict_tensor(batch, 5)  # warm-up
        timings[f"forward_batch{size}_ms"] = best_of(
            lambda b=batch: classifier.predict_tensor(b, 5), 10
        )
    print(json.dumps({"stage_timings": timings}), flush=True)
    return timings


def publish(results: list[RunResult], timings: dict | None, args: argparse.Namespace) -> Path:
    """benchmarks/results/serve_load.json: one row per batching setting."""
    base = results[-1].throughput_rps if args.compare else None
    rows = [
        [
            r.label,
            r.max_batch_size,
            f"{r.throughput_rps:.2f}",
            f"{r.p50_ms:.0f}",
            f"{r.p99_ms:.0f}",
            f"{r.mean_batch_size:.1f}",
            r.errors,
            f"{r.throughput_rps / base:.2f}x" if base else "",
        ]
        for r in results
    ]
    return write_results(
        "serve_load",
        title=f"`vitkit serve` under {args.clients} clients: dynamic batching against batch 1",
        command="python benchmarks/load_test.py " + " ".join(sys.argv[1:]),
        summary={"throughput_gain": results[0].throughput_rps / base if base else None},
        rounds=[asdict(r) for r in results],
        table={
            "columns": [
                "setting",
                "max batch",
                "req/s",
                "p50 ms",
                "p99 ms",
                "mean batch",
                "errors",
                "vs batch 1",
            ],
            "rows": rows,
        },
        notes=(
            f"{args.clients} concurrent clients for {args.duration:g} s per setting, one run each "
            f"(a single round: the spread is not measured), "
            f"{args.model or args.preset + ' (random weights)'}, {args.device}."
        ),
        extra={"stage_timings_ms": timings} if timings else None,
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: build --preset)")
    parser.add_argument(
        "--preset", default="vit-base-patch16-224", help="random-weights model to build"
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per setting")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-batch-delay-ms", type=float, default=5.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compare", action="store_true", help="also run with --max-batch-size 1")
    parser.add_argument("--decode-workers", type=int, help="passed to vitkit serve")
    parser.add_argument(
        "--stage-timings", action="store_true", help="also time decode/preprocess/forward"
    )
    args = parser.parse_args()
    if args.duration <= 0 or args.clients < 1:
        parser.error("--duration must be > 0 and --clients >= 1")

    payload = photo_jpeg()
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or build_checkpoint(args.preset, Path(scratch) / "model")
        timings = (
            stage_timings(model, payload, args.device, args.max_batch_size)
            if args.stage_timings
            else None
        )
        results = [run_once("dynamic", model, args, args.max_batch_size, payload)]
        if args.compare:
            results.append(run_once("batch-1", model, args, 1, payload))
    print(f"wrote {publish(results, timings, args)}")
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
