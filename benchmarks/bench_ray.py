"""What Ray costs: `vitkit predict` in one process vs `--engine ray` with 1 and 2 workers.

The same JPEG files (crops of the real photos bundled with scikit-image and scikit-learn, 256 to
512 pixels a side) and the same checkpoint (ViT-Ti/16-224 by default, seeded random weights, 1000
labels) go through:

- one-process: the loop of `vitkit predict` (``prepared_batches`` + ``predict_tensor``) in a
  fresh process with 1 torch thread and 1 decoding thread (one core), and with 2 of each;
- ray-1, ray-2: ``run_job`` (what `vitkit predict --engine ray` runs) with 1 or 2 workers of one
  CPU each, on one local Ray session started once (its start-up is timed on its own), writing
  Parquet shards.

Each contender runs twice, on N and on 2N images; its rate is N / (wall(2N) - wall(N)): the
images/s of a long job, with the fixed costs (process or worker start, imports, model load,
warm-up) cancelled out, measured the same way for every contender. (Batch completion times seen
by the Ray driver come in bursts, so a per-batch rate would flatter Ray.) The fixed cost is
wall(N) - N / rate. Contenders alternate, each round in a rotated order; medians over rounds. The
Ray overhead at 1 worker is ray-1's rate against one-process's at one core.

    .venv/bin/python benchmarks/bench_ray.py --images 160 --batch-sizes 16 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from results_io import goal_verdict, median_spread, spread, write_results


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_images(folder: Path, count: int) -> Path:
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.immunohistochemistry()]
    photos += list(load_sample_images().images)
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        pixels = photos[index % len(photos)]
        side = int(rng.integers(256, 513))
        side = min(side, *pixels.shape[:2])
        top = int(rng.integers(0, pixels.shape[0] - side + 1))
        left = int(rng.integers(0, pixels.shape[1] - side + 1))
        crop = pixels[top : top + side, left : left + side]
        Image.fromarray(crop).save(folder / f"{index:05d}.jpg", quality=90)
    return folder


def make_checkpoint(folder: Path, preset_name: str) -> Path:
    import torch

    from vitkit.checkpoints import imagenet_labels, save_pretrained
    from vitkit.models.config import preset
    from vitkit.models.vit import ViT

    torch.manual_seed(0)
    labels = dict(enumerate(imagenet_labels()))
    model = ViT(preset(preset_name, id2label=labels, layer_norm_eps=1e-6)).eval()
    save_pretrained(model, folder)
    return folder


# ---- one process: the loop of `vitkit predict`, in a fresh process ----------------------------
def one_process(images: Path, model: Path, batch_size: int, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, __file__, "--child", str(images), str(model), str(batch_size)]
    command.append(str(threads))
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def child(images: str, model: str, batch_size: int, threads: int) -> None:
    """The one-process contender: what `vitkit predict` runs, minus printing."""
    import torch

    from vitkit.images.sources import expand_inputs
    from vitkit.inference import runtime
    from vitkit.inference.classifier import load
    from vitkit.inference.files import prepared_batches

    torch.set_num_threads(threads)
    runtime.tune_process_for_inference("cpu")  # as `vitkit predict` does
    classifier = load(model, device="cpu", threads="auto")  # as `vitkit predict` runs
    sources = expand_inputs([images])
    batches = prepared_batches(classifier, sources, batch_size=batch_size, workers=threads)
    for _chunk, batch in batches:
        classifier.predict_tensor(batch.pixel_values, 5)


# ---- Ray: what `vitkit predict --engine ray` runs, on one Ray session --------------------------
def on_ray(images: Path, model: Path, batch_size: int, workers: int) -> float:
    from vitkit.engines.ray import BatchJob, run_job
    from vitkit.inference.settings import LoadSettings

    out = Path(tempfile.mkdtemp(prefix="bench-ray-out-"))
    job = BatchJob(
        "predict",
        [str(images)],
        out,
        load=LoadSettings(model=str(model), device="cpu", threads="auto"),
        top_k=5,
        tune_process=True,
        workers=workers,
        batch_size=batch_size,
    )
    start = time.perf_counter()
    report = run_job(job)
    wall = time.perf_counter() - start
    assert report.written == len(list(images.iterdir())) and report.failed == 0
    shutil.rmtree(out)
    return wall


# Each contender is compared with one process on as many cores.
SAME_CORES = {
    "one-process, 1 thread": "one-process, 1 thread",
    "ray, 1 worker": "one-process, 1 thread",
    "one-process, 2 threads": "one-process, 2 threads",
    "ray, 2 workers": "one-process, 2 threads",
}


# ---- the run -----------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=160, help="N (the second run has 2N)")
    parser.add_argument("--batch-sizes", default="16")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--preset", default="vit-tiny-patch16-224")
    parser.add_argument("--child", nargs=4, metavar=("IMAGES", "MODEL", "BATCH", "THREADS"))
    args = parser.parse_args()
    if args.child:
        images, model, batch, threads = args.child
        child(images, model, int(batch), int(threads))
        return

    from vitkit.engines.ray import ray_session

    root = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    large = make_images(root / "large", 2 * args.images)
    small = root / "small"
    small.mkdir()
    for path in sorted(large.iterdir())[: args.images]:
        os.link(path, small / path.name)
    model = make_checkpoint(root / "model", args.preset)
    contenders = {
        "one-process, 1 thread": lambda folder, b: one_process(folder, model, b, 1),
        "ray, 1 worker": lambda folder, b: on_ray(folder, model, b, 1),
        "one-process, 2 threads": lambda folder, b: one_process(folder, model, b, 2),
        "ray, 2 workers": lambda folder, b: on_ray(folder, model, b, 2),
    }
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    loads = [os.getloadavg()[0]]
    started = time.perf_counter()
    try:
        with ray_session(workers=2):  # the local Ray `--engine ray` starts, with its settings
            ray_start = time.perf_counter() - started
            for round_index in range(args.rounds):
                names = list(contenders)
                names = names[round_index % len(names) :] + names[: round_index % len(names)]
                for batch_size in (int(b) for b in args.batch_sizes.split(",")):
                    for name in names:
                        walls = [contenders[name](folder, batch_size) for folder in (small, large)]
                        result = rates(args.images, walls)
                        results.setdefault((name, batch_size), []).append(result)
                        log(f"round {round_index} batch {batch_size} {name}: {walls} {result}")
                loads.append(os.getloadavg()[0])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(args, results, ray_start, loads)


GOAL = 0.9  # Ray's rate at least 90% of one process's on as many cores: overhead <= 10%


def rates(images: int, walls: list[float]) -> dict[str, float | None]:
    """The rate of a long job and the fixed cost, from the runs on N and 2N images; None when
    the 2N run was not the longer one (the machine's noise exceeded the work of N images)."""
    extra = walls[1] - walls[0]
    if extra <= 0:
        return {"rate": None, "fixed": None, "walls": walls}
    return {"rate": images / extra, "fixed": walls[0] - images / (images / extra), "walls": walls}


def report(
    args: argparse.Namespace,
    results: dict[tuple[str, int], list[dict[str, float]]],
    ray_start: float,
    loads: list[float],
) -> None:
    """benchmarks/results/ray_overhead.json: each round's rate and its ratio to one process on
    as many cores in the same round; the goal is met only if every round's ratio clears it."""
    rows, summary, rounds = [], {}, []
    for (name, batch_size), runs in results.items():
        base = results[(SAME_CORES[name], batch_size)]
        pairs = [(r["rate"], b["rate"]) for r, b in zip(runs, base, strict=True)]
        ratios = [mine / theirs for mine, theirs in pairs if mine and theirs]
        lost = len(pairs) - len(ratios)  # rounds whose N and 2N runs did not differ by the work
        verdict = ""
        if name != SAME_CORES[name]:
            verdict = goal_verdict(ratios, GOAL) if ratios and not lost else "inconclusive"
        usable = [r for r in runs if r["rate"]]
        rows.append(
            [
                batch_size,
                name,
                median_spread([r["rate"] for r in usable], 1) if usable else "n/a",
                (median_spread(ratios) + "x" if ratios else "n/a")
                + (f"; {lost} round(s) unmeasurable" if lost else ""),
                verdict,
                median_spread([r["fixed"] for r in usable], 1) if usable else "n/a",
            ]
        )
        summary[f"{name}, batch {batch_size}"] = {
            "ratio": spread(ratios) if ratios else None,
            "unmeasurable_rounds": lost,
            "verdict": verdict,
        }
        rounds += [
            {"contender": name, "batch_size": batch_size, "round": i, **r}
            for i, r in enumerate(runs)
        ]
    path = write_results(
        "ray_overhead",
        title="Ray overhead: `--engine ray` against one process on as many cores",
        command="python benchmarks/bench_ray.py " + " ".join(sys.argv[1:]),
        summary=summary,
        rounds=rounds,
        table={
            "columns": [
                "batch",
                "contender",
                "images/s (median, min-max)",
                "vs one process on as many cores, per round",
                f"overhead <= {1 - GOAL:.0%}",
                "fixed cost s",
            ],
            "rows": rows,
        },
        notes=(
            "The same JPEG crops of the bundled sample photos and the same checkpoint "
            f"({args.preset}, seeded random weights). Each contender runs on N={args.images} and "
            "on 2N images; its rate is N / (wall(2N) - wall(N)), so process or worker start, "
            "imports and model load cancel out, and the fixed cost is the rest of wall(N). "
            f"{args.rounds} rounds in a rotated order; the ratio is taken round by round. "
            "'met' needs every round at or above the goal, 'missed' every round below it; "
            "otherwise the rounds cannot tell (inconclusive), as when a round's 2N run was not "
            "longer than its N run (the machine's noise exceeded the work: unmeasurable). "
            f"Local `ray.init` took {ray_start:.1f} s; 1-minute load average per round: {loads}."
        ),
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
