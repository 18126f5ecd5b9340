"""`vitkit serve --rate-limit 5/s` under 64 clients that never slow down: 429 + Retry-After,
the served rate, and the process afterwards.

One `vitkit serve` process on loopback (a 2-layer ViT-Ti, random weights: the limit is what is
measured, not the model) behind an API key and ``--rate-limit 5/s`` (default burst: half a
second's worth, 3). 64 async clients share that key and send ``POST /v1/predict`` with a
photo as fast as the server answers, for 10 s per round; each round records every answer's
status, the Retry-After values of the 429s, the served count and rate, and whether /healthz
still answers at the end.

    python benchmarks/serve_limits.py            # 3 rounds, writes results/serve_rate_limit.json
    python benchmarks/serve_limits.py --quick    # 1 round of 3 s, nothing written
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench_serve_vs_script import LOOPBACK, Service, free_port
from results_io import mark_start, median_spread, write_results

KEY = "benchmark-key-0123456789abcdefghij"


def make_inputs(work: Path) -> None:
    """The tiny checkpoint and the photo (in a child process: this one stays torch-free)."""
    import io

    import torch
    from PIL import Image
    from skimage import data

    from vitkit.checkpoints import save_pretrained
    from vitkit.images.processor import ImageProcessor
    from vitkit.models.config import preset
    from vitkit.models.vit import ViT

    torch.manual_seed(0)
    config = preset("vit-tiny-patch16-224", num_hidden_layers=2, image_size=64,
                    id2label={0: "cat", 1: "mug", 2: "rocket"})  # fmt: skip
    save_pretrained(ViT(config).eval(), work / "model", ImageProcessor.for_config(config).to_dict())
    photo = Image.fromarray(data.chelsea())
    photo.thumbnail((128, 128))
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=90)
    (work / "photo.jpg").write_bytes(buffer.getvalue())


async def hammer(url: str, photo: bytes, clients: int, seconds: float) -> dict[str, Any]:
    statuses: Counter[int] = Counter()
    retry_after: Counter[str] = Counter()
    served_at: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "image/jpeg"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60,
                                 trust_env=False) as client:  # fmt: skip
        start = time.monotonic()
        stop_at = start + seconds

        async def one_client() -> None:
            while time.monotonic() < stop_at:
                sent = time.monotonic() - start
                try:
                    response = await client.post("/v1/predict", content=photo)
                except httpx.HTTPError:
                    statuses[-1] += 1
                    continue
                statuses[response.status_code] += 1
                if response.status_code == 429:
                    retry_after[response.headers.get("retry-after", "missing")] += 1
                elif response.status_code == 200:
                    served_at.append(sent)

        await asyncio.gather(*(one_client() for _ in range(clients)))
        elapsed = time.monotonic() - start
    # Every request is sent within the window; the last answers come after it (the server
    # lags under load, and the bucket keeps refilling for requests still arriving), so the
    # rate is over the whole span, from the first request to the last answer.
    return {
        "seconds": seconds,
        "last_answer_s": elapsed,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "retry_after": dict(retry_after),
        "served": len(served_at),
        "served_rate": len(served_at) / elapsed,
    }


def one_round(work: Path, rate: str, clients: int, seconds: float) -> dict[str, Any]:
    port = free_port()
    command = [sys.executable, "-m", "vitkit", "serve", "--host", LOOPBACK, "--port", str(port)]
    command += ["--model", str(work / "model"), "--device", "cpu", "--log-level", "warning"]
    command += ["--api-keys", str(work / "keys.txt"), "--rate-limit", rate]
    service = Service(command, port, dict(os.environ, HF_HUB_OFFLINE="1"))
    try:
        service.wait_ready("/readyz")
        time.sleep(1.0)  # a full bucket: the round starts from the documented burst
        record = asyncio.run(hammer(service.url, (work / "photo.jpg").read_bytes(), clients,
                                    seconds))  # fmt: skip
        health = httpx.get(f"{service.url}/healthz", trust_env=False, timeout=10)
        record["alive_after"] = service.process.poll() is None and health.status_code == 200
        return record
    finally:
        service.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", default="5/s")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--make-inputs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_inputs:
        make_inputs(Path(args.make_inputs))
        return 0
    if args.quick:
        args.rounds, args.seconds = 1, 3.0
    mark_start()
    work = Path(tempfile.mkdtemp(prefix="vitkit-serve-limits-"))
    subprocess.run([sys.executable, __file__, "--make-inputs", str(work)], check=True)
    (work / "keys.txt").write_text(f"benchmark:{KEY}\n")
    rounds = []
    for index in range(args.rounds):
        record = one_round(work, args.rate, args.clients, args.seconds)
        record["round"] = index
        print(record, file=sys.stderr, flush=True)
        rounds.append(record)
    limit = float(args.rate.split("/")[0])
    rates = [r["served_rate"] for r in rounds]
    refused = [r["statuses"].get("429", 0) for r in rounds]
    summary = {
        "limit_per_s": limit,
        "served_rate_median": statistics.median(rates),
        "served_rate_max": max(rates),
        "worst_excess_over_limit": max(rates) / limit - 1,
        "answers_429_median": statistics.median(refused),
        "other_statuses": sorted({s for r in rounds for s in r["statuses"]} - {"200", "429"}),
        "retry_after_values": sorted({v for r in rounds for v in r["retry_after"]}),
        "alive_after_every_round": all(r["alive_after"] for r in rounds),
        "rounds": len(rounds),
    }
    print(summary)
    if args.quick:
        return 0
    write_results(
        "serve_rate_limit",
        title=f"Serving: --rate-limit {args.rate} under {args.clients} clients",
        summary=summary,
        rounds=rounds,
        table={
            "columns": ["", f"{args.rounds} rounds of {args.seconds:g} s (median, min-max)"],
            "rows": [
                [
                    "served requests/s, first request to last answer (burst included)",
                    median_spread(rates, 2),
                ],
                ["429 answers per round", median_spread(refused, 0)],
                ["Retry-After values seen", ", ".join(summary["retry_after_values"])],
                [
                    "process up and /healthz 200 after each round",
                    "yes" if summary["alive_after_every_round"] else "NO",
                ],
            ],
        },
        notes=(
            f"{args.clients} async clients (httpx) on one API key send POST /v1/predict (a "
            "128-px JPEG, a 2-layer ViT-Ti) back to back, never waiting for Retry-After; the "
            "token bucket starts full (burst 3 = half a second's worth), so a round serves at "
            f"most 3 + {limit:g} per second of its span. The span runs from the first request "
            "to the last answer: requests sent at the end of the window arrive (and are "
            "answered) later on a busy machine."
        ),
        extra={"clients": args.clients, "seconds": args.seconds, "rate": args.rate},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
