"""`vitkit serve` against the hand-written FastAPI + transformers service it replaces.

The script users run today (one image per request, a sync endpoint, transformers' pipeline):

    app = FastAPI()
    classifier = pipeline("image-classification", model=MODEL)

    @app.get("/predict_image_class")
    def predict_image_class(image_url: str):
        image = Image.open(io.BytesIO(httpx.get(image_url).content)).convert("RGB")
        predictions = classifier(image)
        return {"predicted_class": predictions[0]["label"], "predictions": predictions}

Both services get the same model (ViT-B/16-224, seeded random weights, 1000 labels), run as
their own uvicorn processes on loopback, and answer `GET /predict_image_class?image_url=` for a
JPEG (scikit-image's "chelsea", 451x300) served by a local `http.server` process. N async
clients loop for --duration seconds after a warm-up; throughput, p50 and p99 latency and errors
are recorded. Contenders alternate, so load from elsewhere hits both alike.

    .venv/bin/python benchmarks/bench_serve_vs_script.py --clients 1,16,64 --duration 40
    .venv/bin/python benchmarks/bench_serve_vs_script.py --quick     # tiny model, a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from results_io import median_spread, write_results

LOOPBACK = "127.0.0.1"
SCRIPT = """
    import io, os
    import httpx
    from fastapi import FastAPI
    from PIL import Image
    from transformers import pipeline

    app = FastAPI()
    classifier = pipeline("image-classification", model=os.environ["MODEL_DIR"], device="cpu")

    @app.get("/predict_image_class")
    def predict_image_class(image_url: str):
        image = Image.open(io.BytesIO(httpx.get(image_url).content)).convert("RGB")
        predictions = classifier(image)
        return {"predicted_class": predictions[0]["label"], "predictions": predictions}
"""


@dataclass
class Run:
    contender: str
    clients: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def make_inputs(work: Path, preset: str) -> None:
    """The checkpoint and the photo (run in a child: this process stays free of torch)."""
    import torch
    from PIL import Image
    from skimage import data

    from vitkit.checkpoints import imagenet_labels, save_pretrained
    from vitkit.models.config import preset as vit_preset
    from vitkit.models.vit import ViT

    torch.manual_seed(0)
    config = vit_preset(preset, id2label=dict(enumerate(imagenet_labels())))
    save_pretrained(ViT(config).eval(), work / "model")
    images = work / "images"
    images.mkdir()
    Image.fromarray(data.chelsea()).save(images / "cat.jpg", quality=90)


class Service:
    """A server process on loopback, started and stopped around one measured run."""

    def __init__(self, command: list[str], port: int, env: dict[str, str]) -> None:
        self.url = f"http://{LOOPBACK}:{port}"
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def wait_ready(self, path: str, seconds: float = 300) -> None:
        end = time.monotonic() + seconds
        with httpx.Client(trust_env=False, timeout=5) as client:
            while time.monotonic() < end:
                if self.process.poll() is not None:
                    raise SystemExit(f"server exited with {self.process.returncode}")
                try:
                    if client.get(self.url + path).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.3)
        raise SystemExit(f"{self.url} not ready after {seconds} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def hammer(url: str, clients: int, duration: float) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    stop_at = time.monotonic() + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def loop(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                ok = (await client.get(url)).status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1

    began = time.monotonic()
    async with httpx.AsyncClient(timeout=300, limits=limits, trust_env=False) as client:
        await asyncio.gather(*(loop(client) for _ in range(clients)))
    return latencies, errors, time.monotonic() - began


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def contenders(work: Path, precision_int8: bool) -> dict[str, list[str]]:
    vitkit = [sys.executable, "-m", "vitkit", "serve", "--model", str(work / "model")]
    vitkit += ["--host", LOOPBACK, "--allow-private-urls", "--log-level", "warning"]
    script = [sys.executable, "-m", "uvicorn", "script_service:app", "--host", LOOPBACK]
    script += ["--log-level", "warning", "--app-dir", str(work)]
    racers = {"vitkit serve fp32": vitkit, "hand-written FastAPI + pipeline": script}
    if precision_int8:
        racers["vitkit serve int8"] = [*vitkit, "--precision", "int8"]
    return racers


def measure(
    name: str, command: list[str], clients: int, args: argparse.Namespace, image_url: str
) -> Run:
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", MODEL_DIR=str(args.work / "model"))
    service = Service([*command, "--port", str(port)], port, env)
    try:
        # vitkit answers /readyz 200 once the model is loaded; the script's uvicorn accepts
        # connections only after its module (and so the pipeline) has loaded.
        service.wait_ready("/readyz" if name.startswith("vitkit") else "/docs")
        url = f"{service.url}/predict_image_class?image_url={image_url}"
        asyncio.run(hammer(url, clients, args.warmup))
        latencies, errors, seconds = asyncio.run(hammer(url, clients, args.duration))
    finally:
        service.stop()
    run = Run(
        name, clients, len(latencies), errors, seconds, percentile(latencies, 0.5),
        percentile(latencies, 0.99),
    )  # fmt: skip
    log(
        f"{name}, {clients} clients: {run.throughput:.2f} req/s, p50 {run.p50_ms:.0f} ms, "
        f"p99 {run.p99_ms:.0f} ms, {errors} errors"
    )
    return run


SCRIPT_NAME = "hand-written FastAPI + pipeline"


def rows_of(runs: list[Run], clients: int) -> list[list[str]]:
    """One row per service at this client count; the throughput ratio is taken round by round
    against the script's run in the same round."""
    mine = [r for r in runs if r.clients == clients]
    reference = [r.throughput for r in mine if r.contender == SCRIPT_NAME]
    rows = []
    for name in dict.fromkeys(r.contender for r in mine):
        own = [r for r in mine if r.contender == name]
        ratios = [r.throughput / ref for r, ref in zip(own, reference, strict=True)]
        rows.append(
            [
                clients,
                name,
                median_spread([r.throughput for r in own]),
                f"{statistics.median(r.p50_ms for r in own):.0f}",
                f"{statistics.median(r.p99_ms for r in own):.0f}",
                sum(r.errors for r in own),
                median_spread(ratios) + "x",
            ]
        )
    return rows


def publish(runs: list[Run], args: argparse.Namespace) -> Path:
    clients = dict.fromkeys(r.clients for r in runs)
    return write_results(
        "serve_vs_script",
        title="`vitkit serve` against a hand-written FastAPI + `pipeline` service",
        command="python benchmarks/bench_serve_vs_script.py " + shlex.join(sys.argv[1:]),
        summary={
            "rounds": args.rounds,
            "preset": args.preset,
            "errors": sum(r.errors for r in runs),
        },
        rounds=[vars(r) for r in runs],
        table={
            "columns": [
                "clients",
                "service",
                "req/s (median, min-max)",
                "p50 ms",
                "p99 ms",
                "errors",
                "throughput vs the script, per round",
            ],
            "rows": [row for count in clients for row in rows_of(runs, count)],
        },
        notes=(
            f"`GET /predict_image_class?image_url=` on loopback, {args.preset} (random weights); "
            f"{args.duration:g} s per run after {args.warmup:g} s of warm-up, {args.rounds} "
            "round(s), services in a rotated order."
        ),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--duration", type=float, default=40.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--preset", default="vit-base-patch16-224")
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny model, 1 and 4 clients, 4 s")
    parser.add_argument("--make-inputs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_inputs:
        make_inputs(Path(args.make_inputs), args.preset)
        return 0
    if args.quick:
        args.clients, args.duration, args.warmup = "1,4", 4.0, 2.0
        args.preset = "vit-tiny-patch16-224"
    args.work = Path(tempfile.mkdtemp(prefix="vitkit-serve-bench-"))
    subprocess.run(
        [sys.executable, __file__, "--make-inputs", str(args.work), "--preset", args.preset],
        check=True,
    )
    (args.work / "script_service.py").write_text(textwrap.dedent(SCRIPT).lstrip())
    image_port = free_port()
    images = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(image_port), "--bind", LOOPBACK],
        cwd=args.work / "images",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    image_url = f"http://{LOOPBACK}:{image_port}/cat.jpg"
    runs: list[Run] = []
    try:
        time.sleep(1)
        racers = contenders(args.work, not args.no_int8)
        for clients in (int(c) for c in args.clients.split(",")):
            for round_index in range(args.rounds):
                names = list(racers)
                names = names[round_index % len(names) :] + names[: round_index % len(names)]
                for name in names:
                    runs.append(measure(name, racers[name], clients, args, image_url))
    finally:
        images.terminate()
        images.wait()
    print(f"wrote {publish(runs, args)}")
    return 1 if any(r.errors for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
