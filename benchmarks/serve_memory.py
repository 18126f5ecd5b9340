"""What `vitkit serve` holds in memory, beside the seed-style FastAPI + transformers script.

Separate processes on loopback, side by side, each serving a ViT-B/16 (seeded random weights,
1000 labels, 346 MB of fp32 weights):

- the hand-written script users run today (benchmarks/bench_serve_vs_script.py's SCRIPT:
  transformers' pipeline, one image per request);
- `vitkit serve` with one model;
- `vitkit serve` with two such models (``--model a=... --model b=...``).

Each is measured at readiness (idle, nothing asked yet) and again idle after one answered
request per model (``GET /predict_image_class?image_url=`` to a local image server, scikit-
image's "chelsea"). transformers maps the checkpoint lazily, so the script's weights become
resident only when its first request reads them; vitkit reads them and warms up before it says
ready. Then the one-model service gets a 48 MP phone-size JPEG (8064x6048) and its peak RSS is
sampled every 10 ms against the bound the service states (/v1/models: memory_bound_bytes).

    python benchmarks/serve_memory.py               # 2 rounds, writes results/serve_memory.json
    python benchmarks/serve_memory.py --quick       # ViT-Ti, 1 round, nothing written
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench_serve_vs_script import LOOPBACK, SCRIPT, Service, free_port
from results_io import mark_start, median_spread, write_results

MiB = 2**20


def make_inputs(work: Path, preset: str) -> None:
    """Two checkpoints (different seeds), the photo and the 48 MP JPEG (in a child process:
    this one stays free of torch, so its own memory never mixes with what is measured)."""
    import torch
    from PIL import Image
    from skimage import data

    from vitkit.checkpoints import imagenet_labels, save_pretrained
    from vitkit.models.config import preset as vit_preset
    from vitkit.models.vit import ViT

    config = vit_preset(preset, id2label=dict(enumerate(imagenet_labels())))
    for seed, name in enumerate(("model", "second")):
        torch.manual_seed(seed)
        save_pretrained(ViT(config).eval(), work / name)
    images = work / "images"
    images.mkdir()
    Image.fromarray(data.chelsea()).save(images / "cat.jpg", quality=90)
    big = Image.fromarray(data.chelsea()).resize((8064, 6048), Image.BILINEAR)
    big.save(work / "48mp.jpg", quality=85)


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def settle(pid: int, seconds: float = 2.0) -> int:
    """RSS once the process has been idle for ``seconds``."""
    time.sleep(seconds)
    return rss(pid)


def measure_script(work: Path, image_url: str) -> dict[str, Any]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "script_service:app", "--host", LOOPBACK]
    command += ["--log-level", "warning", "--app-dir", str(work), "--port", str(port)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", MODEL_DIR=str(work / "model"))
    service = Service(command, port, env)
    try:
        started = time.monotonic()
        service.wait_ready("/docs")
        ready_s = time.monotonic() - started
        at_ready = settle(service.process.pid)
        answer = httpx.get(f"{service.url}/predict_image_class", params={"image_url": image_url},
                           timeout=300, trust_env=False)  # fmt: skip
        answer.raise_for_status()
        return {"ready_s": ready_s, "rss_ready": at_ready,
                "rss_after_request": settle(service.process.pid)}  # fmt: skip
    finally:
        service.stop()


def measure_vitkit(work: Path, image_url: str, models: list[str], big: bool) -> dict[str, Any]:
    port = free_port()
    command = [sys.executable, "-m", "vitkit", "serve", "--host", LOOPBACK, "--port", str(port)]
    command += ["--allow-private-urls", "--log-level", "warning", "--device", "cpu"]
    for model in models:
        command += ["--model", model]
    service = Service(command, port, dict(os.environ, HF_HUB_OFFLINE="1"))
    try:
        started = time.monotonic()
        service.wait_ready("/readyz")
        ready_s = time.monotonic() - started
        pid = service.process.pid
        record: dict[str, Any] = {"ready_s": ready_s, "rss_ready": settle(pid)}
        with httpx.Client(base_url=service.url, timeout=300, trust_env=False) as client:
            for model in models:
                name = model.split("=", 1)[0] if "=" in model else None
                params = {"image_url": image_url, **({"model": name} if name else {})}
                client.get("/predict_image_class", params=params).raise_for_status()
            record["rss_after_request"] = settle(pid)
            listed = client.get("/v1/models").json()
            record["models"] = [{"name": m["name"], **m["memory"]} for m in listed["models"]]
            record["memory_bound_bytes"] = listed["memory_bound_bytes"]
            if big:
                record.update(peak_for_big_jpeg(client, pid, (work / "48mp.jpg").read_bytes()))
        return record
    finally:
        service.stop()


def peak_for_big_jpeg(client: httpx.Client, pid: int, jpeg: bytes) -> dict[str, Any]:
    idle = rss(pid)
    samples, stop = [idle], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(rss(pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    try:
        response = client.post("/v1/predict", content=jpeg)
    finally:
        stop.set()
        sampler.join()
    response.raise_for_status()
    return {
        "big_jpeg_bytes": len(jpeg),
        "big_jpeg_status": response.status_code,
        "big_jpeg_decoded_scale": response.json()[0][0].get("decoded_scale", 1.0),
        "big_jpeg_seconds": time.perf_counter() - started,
        "big_jpeg_rss_before": idle,
        "big_jpeg_rss_peak": max(samples),
    }


def one_round(work: Path, image_url: str, index: int) -> dict[str, Any]:
    model, second = str(work / "model"), str(work / "second")
    contenders = {
        "script": lambda: measure_script(work, image_url),
        "vitkit_one": lambda: measure_vitkit(work, image_url, [model], big=True),
        "vitkit_two": lambda: measure_vitkit(
            work, image_url, [f"a={model}", f"b={second}"], big=False
        ),
    }
    names = list(contenders)
    names = names[index % 3 :] + names[: index % 3]  # alternate who goes first
    record: dict[str, Any] = {"round": index}
    for name in names:
        print(f"round {index}: {name}", file=sys.stderr, flush=True)
        record[name] = contenders[name]()
    return record


def summarize(rounds: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    def values(key: str, contender: str) -> list[float]:
        return [r[contender][key] / MiB for r in rounds]

    ratio_ready = [r["vitkit_one"]["rss_ready"] / r["script"]["rss_ready"] for r in rounds]
    ratio_after = [
        r["vitkit_one"]["rss_after_request"] / r["script"]["rss_after_request"] for r in rounds
    ]
    second_added = [
        (r["vitkit_two"]["rss_after_request"] - r["vitkit_one"]["rss_after_request"]) / MiB
        for r in rounds
    ]
    second = rounds[0]["vitkit_two"]["models"][1]
    allowed = (second["weights_bytes"] + second["decode_buffers_bytes"]) / MiB
    big_added = [
        (r["vitkit_one"]["big_jpeg_rss_peak"] - r["vitkit_one"]["big_jpeg_rss_before"]) / MiB
        for r in rounds
    ]
    bound = rounds[0]["vitkit_one"]["memory_bound_bytes"] / MiB
    summary = {
        "script_rss_ready_mib": statistics.median(values("rss_ready", "script")),
        "script_rss_after_request_mib": statistics.median(values("rss_after_request", "script")),
        "vitkit_rss_ready_mib": statistics.median(values("rss_ready", "vitkit_one")),
        "vitkit_rss_after_request_mib": statistics.median(
            values("rss_after_request", "vitkit_one")
        ),
        "ratio_ready_median": statistics.median(ratio_ready),
        "ratio_after_request_median": statistics.median(ratio_after),
        "ratio_after_request_max": max(ratio_after),
        "second_model_added_mib": statistics.median(second_added),
        "second_model_allowed_mib": allowed,
        "big_jpeg_added_mib_max": max(big_added),
        "memory_bound_mib": bound,
        "rounds": len(rounds),
    }
    table = {
        "columns": ["", "seed-style script", "vitkit serve, 1 model", "vitkit serve, 2 models"],
        "rows": [
            ["RSS at readiness, MiB", *(median_spread(values("rss_ready", c), 0)
                                        for c in ("script", "vitkit_one", "vitkit_two"))],
            ["RSS idle after one request per model, MiB",
             *(median_spread(values("rss_after_request", c), 0)
               for c in ("script", "vitkit_one", "vitkit_two"))],
            ["ready after, s", *(median_spread([r[c]["ready_s"] for r in rounds], 1)
                                 for c in ("script", "vitkit_one", "vitkit_two"))],
        ],
    }  # fmt: skip
    return summary, table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--preset", default="vit-base-patch16-224")
    parser.add_argument("--quick", action="store_true", help="ViT-Ti, 1 round, nothing written")
    parser.add_argument("--make-inputs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_inputs:
        make_inputs(Path(args.make_inputs), args.preset)
        return 0
    if args.quick:
        args.rounds, args.preset = 1, "vit-tiny-patch16-224"
    mark_start()
    work = Path(tempfile.mkdtemp(prefix="vitkit-serve-memory-"))
    subprocess.run([sys.executable, __file__, "--make-inputs", str(work), "--preset", args.preset],
                   check=True)  # fmt: skip
    (work / "script_service.py").write_text(textwrap.dedent(SCRIPT).lstrip())
    image_port = free_port()
    images = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(image_port), "--bind", LOOPBACK],
        cwd=work / "images", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    image_url = f"http://{LOOPBACK}:{image_port}/cat.jpg"
    try:
        time.sleep(1)
        rounds = [one_round(work, image_url, index) for index in range(args.rounds)]
    finally:
        images.terminate()
        images.wait()
    summary, table = summarize(rounds)
    print(io.StringIO(str(summary)).getvalue())
    if args.quick:
        return 0
    write_results(
        "serve_memory",
        title="Serving: memory of one and two ViT-B/16 models beside the seed-style script",
        summary=summary,
        rounds=rounds,
        table=table,
        notes=(
            "Separate uvicorn processes, side by side, alternating order; RSS read with psutil "
            "after 2 s idle. ViT-B/16, random weights, fp32 (346 MB of weights). The script "
            "(transformers pipeline) maps its safetensors lazily: its weights become resident "
            "with its first request, so compare the idle RSS after one request. "
            f"A second ViT-B added {summary['second_model_added_mib']:.0f} MiB against its "
            f"weights + decode buffers of {summary['second_model_allowed_mib']:.0f} MiB; a 48 MP "
            f"JPEG (8064x6048) answered 200 at decoded_scale 0.5 and raised the peak RSS by "
            f"{summary['big_jpeg_added_mib_max']:.0f} MiB, under the stated bound of "
            f"{summary['memory_bound_mib']:.0f} MiB."
        ),
        extra={"preset": args.preset, "photo": "skimage chelsea 451x300 JPEG q90"},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
