"""`vitkit train` against timm's own `train.py`, same folder, model, recipe and epochs.

Both are whole processes, as a user runs them, with the same settings: ViT-Ti/16 from scratch at
--image-size (default 64), AdamW lr 1e-3, weight decay 0.05, batch 64, cosine schedule, no label
smoothing, random-resized-crop + horizontal flip (timm's colour jitter off), one validation pass
per epoch, two data-loading workers, fp32 on the CPU. The data is a Fashion-MNIST subset
(Debian's dataset-fashion-mnist) or, without it, scikit-learn's digits, written as an image
folder with train/ and validation/ splits (timm's names; vitkit reads validation/ as val/ through
a link). Contenders alternate; wall time, CPU time and per-epoch time are reported.

timm's train.py is not part of the timm wheel: pass it with --timm-train (it is the file
https://github.com/huggingface/pytorch-image-models/blob/main/train.py).

    .venv/bin/python benchmarks/bench_train_vs_timm.py --timm-train ~/pytorch-image-models/train.py \
        --epochs 2 --rounds 2 --write
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_folder(root: Path, per_class_train: int, per_class_val: int) -> str:
    """An image folder of real images; returns the data set's name."""
    from PIL import Image

    from vitkit.experiments import demo_data

    if demo_data.fashion_mnist_available():
        images, labels, classes = demo_data.load_fashion_mnist_arrays()
        name = "Fashion-MNIST"
    else:
        images, labels, classes = demo_data.load_digits_arrays()
        name = "digits"
    counts: dict[tuple[str, int], int] = {}
    for pixels, label in zip(images, labels, strict=True):
        train_seen = counts.get(("train", int(label)), 0)
        split = "train" if train_seen < per_class_train else "validation"
        if counts.get((split, int(label)), 0) >= (
            per_class_train if split == "train" else per_class_val
        ):
            continue
        counts[(split, int(label))] = counts.get((split, int(label)), 0) + 1
        folder = root / split / classes[int(label)].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{sum(counts.values()):06d}.png")
    (root / "val").symlink_to("validation")
    return name


def commands(args: argparse.Namespace, data: Path, out: Path) -> dict[str, list[str]]:
    size, epochs = str(args.image_size), str(args.epochs)
    vitkit = [
        sys.executable, "-m", "vitkit", "train", "--data", str(data), "--out", str(out / "vitkit"),
        "--from-scratch", "--preset", "vit-tiny-patch16-224", "--image-size", size,
        "--optimizer", "adamw", "--lr", "1e-3", "--weight-decay", "0.05", "--batch-size", "64",
        "--epochs", epochs, "--augment", "natural", "--balance", "none", "--workers", "2",
        "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    timm = [
        sys.executable, str(args.timm_train), str(data), "--model", "vit_tiny_patch16_224",
        "--img-size", size, "--model-kwargs", f"img_size={size}", "--num-classes", "10", "--opt", "adamw", "--lr", "1e-3",
        "--weight-decay", "0.05", "-b", "64", "--epochs", epochs, "--warmup-epochs", "0",
        "--sched", "cosine", "--smoothing", "0", "--color-jitter", "0", "--device", "cpu",
        "--no-prefetcher", "-j", "2", "--output", str(out / "timm"), "--log-interval", "100000",
    ]  # fmt: skip
    return {"vitkit train": vitkit, "timm train.py": timm}


def run(command: list[str], out: Path) -> tuple[float, float]:
    """(wall s, CPU s) of one whole run, in a fresh output folder."""
    for leftover in (out / "vitkit", out / "timm"):
        subprocess.run(["rm", "-rf", str(leftover)], check=True)
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, stderr = process.communicate()  # waits: the child's CPU time is in os.times() now
    wall = time.perf_counter() - started
    if process.returncode:
        raise SystemExit(f"{shlex.join(command)} failed:\n{stderr.decode()[-3000:]}")
    return wall, _children_cpu()


_cpu_seen = 0.0


def _children_cpu() -> float:
    """CPU seconds of the last finished child (difference of the cumulative children counter)."""
    global _cpu_seen
    times = os.times()
    total = times.children_user + times.children_system
    spent, _cpu_seen = total - _cpu_seen, total
    return spent


def vitkit_epoch_seconds(out: Path) -> list[float]:
    lines = (out / "vitkit" / "metrics.jsonl").read_text().splitlines()
    return [r["seconds"] for r in map(json.loads, lines) if r.get("type") == "epoch"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timm-train", type=Path, required=True, help="timm's train.py")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--train-per-class", type=int, default=200)
    parser.add_argument("--val-per-class", type=int, default=50)
    parser.add_argument("--write", action="store_true", help="write BENCHMARKS.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vitkit-train-bench-"))
    data_name = make_folder(work / "data", args.train_per_class, args.val_per_class)
    racers = commands(args, work / "data", work)
    walls: dict[str, list[float]] = {name: [] for name in racers}
    cpus: dict[str, list[float]] = {name: [] for name in racers}
    epoch_times: list[float] = []
    _children_cpu()
    for round_index in range(args.rounds):
        order = list(racers) if round_index % 2 == 0 else list(reversed(racers))
        for name in order:
            wall, cpu = run(racers[name], work)
            walls[name].append(wall)
            cpus[name].append(cpu)
            if name == "vitkit train":
                epoch_times += vitkit_epoch_seconds(work)
            log(f"round {round_index + 1}: {name}: {wall:.1f}s wall, {cpu:.1f}s CPU")
    timm_wall = statistics.median(walls["timm train.py"])
    lines = [
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, load "
        f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}; {data_name}, "
        f"{args.train_per_class}/{args.val_per_class} train/validation images per class at "
        f"{args.image_size}x{args.image_size}, ViT-Ti/16 from scratch, {args.epochs} epochs, "
        f"{args.rounds} alternating rounds. "
        f"`python benchmarks/bench_train_vs_timm.py {shlex.join(sys.argv[1:])}`",
        "",
        "| contender | wall s, median (min-max) | CPU s, median | speed vs timm train.py |",
        "|---|---|---|---|",
    ]
    for name in racers:
        wall = statistics.median(walls[name])
        lines.append(
            f"| {name} | {wall:.1f} ({min(walls[name]):.1f}-{max(walls[name]):.1f}) | "
            f"{statistics.median(cpus[name]):.1f} | {timm_wall / wall:.2f}x |"
        )
    if epoch_times:
        lines.append(f"\nvitkit's own epoch times (metrics.jsonl): {epoch_times}")
    text = "\n".join(lines)
    print(text)
    if args.write:
        from vitkit.bench import engine as bench

        bench.write_markdown_block("BENCHMARKS.md", "Whole commands", "train-vs-timm", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
