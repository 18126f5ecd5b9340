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
        --epochs 2 --rounds 2
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

from results_io import median_spread, spread, write_results


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_folder(root: Path, per_class_train: int, per_class_val: int) -> tuple[str, dict[str, int]]:
    """An image folder of real images, train/ and validation/ (timm's split names; val/ is a
    link to validation/ for vitkit, so both read the very same files). A class with fewer images
    than asked for keeps a fifth of them for validation. Returns the data set's name and the
    image counts written to each split."""
    import numpy as np
    from PIL import Image

    from vitkit.experiments import demo_data

    if demo_data.fashion_mnist_available():
        images, labels, classes = demo_data.load_fashion_mnist_arrays()
        name = "Fashion-MNIST"
    else:
        images, labels, classes = demo_data.load_digits_arrays()
        name = "digits"
    written = {"train": 0, "validation": 0}
    for label, class_name in enumerate(classes):
        mine = np.flatnonzero(labels == label)
        val = min(per_class_val, max(1, len(mine) // 5))
        train = min(per_class_train, len(mine) - val)
        for split, indices in (("train", mine[:train]), ("validation", mine[train : train + val])):
            folder = root / split / class_name.replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            for index in indices:
                Image.fromarray(images[index]).save(folder / f"{index:06d}.png")
            written[split] += len(indices)
    (root / "val").symlink_to("validation")
    return name, written


def images_read(output: str) -> dict[str, int]:
    """The train/val counts vitkit says it read ("data: 2000 train / 500 val / ...")."""
    import re

    found = re.search(r"data: (\d+) train / (\d+) val", output)
    return {"train": int(found.group(1)), "validation": int(found.group(2))} if found else {}


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


def run(command: list[str], out: Path) -> tuple[float, float, str]:
    """(wall s, CPU s, output) of one whole run, in a fresh output folder."""
    for leftover in (out / "vitkit", out / "timm"):
        subprocess.run(["rm", "-rf", str(leftover)], check=True)
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, _ = process.communicate()  # waits: the child's CPU time is in os.times() now
    wall = time.perf_counter() - started
    text = output.decode(errors="replace")
    if process.returncode:
        raise SystemExit(f"{shlex.join(command)} failed:\n{text[-3000:]}")
    return wall, _children_cpu(), text


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
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vitkit-train-bench-"))
    data_name, written = make_folder(work / "data", args.train_per_class, args.val_per_class)
    racers = commands(args, work / "data", work)
    rounds: list[dict] = []
    _children_cpu()
    for round_index in range(args.rounds):
        order = list(racers) if round_index % 2 == 0 else list(reversed(racers))
        for name in order:
            wall, cpu, output = run(racers[name], work)
            row = {"round": round_index, "contender": name, "wall_s": wall, "cpu_s": cpu}
            if name == "vitkit train":
                row["epoch_s"] = vitkit_epoch_seconds(work)
                row["images_read"] = images_read(output)
                if row["images_read"] != written:
                    raise SystemExit(
                        f"vitkit read {row['images_read']}, the folder holds {written}"
                    )
            rounds.append(row)
            log(f"round {round_index + 1}: {name}: {wall:.1f}s wall, {cpu:.1f}s CPU")
    print(f"wrote {publish(args, data_name, written, rounds)}")
    return 0


def publish(
    args: argparse.Namespace, data_name: str, written: dict[str, int], rounds: list[dict]
) -> Path:
    def walls(name: str) -> list[float]:
        return [r["wall_s"] for r in rounds if r["contender"] == name]

    # each round's timm wall time over vitkit's (the two ran back to back)
    ratios = [t / v for t, v in zip(walls("timm train.py"), walls("vitkit train"), strict=True)]
    images = f"{written['train']} train / {written['validation']} validation"
    rows = [
        [
            name,
            images,
            median_spread(walls(name), 1),
            f"{statistics.median(r['cpu_s'] for r in rounds if r['contender'] == name):.1f}",
            "1.00x" if name == "timm train.py" else f"{median_spread(ratios)}x",
        ]
        for name in ("vitkit train", "timm train.py")
    ]
    return write_results(
        "train_vs_timm",
        title="`vitkit train` against timm's `train.py`, the same folders",
        command="python benchmarks/bench_train_vs_timm.py " + shlex.join(sys.argv[1:]),
        summary={"speed_vs_timm": spread(ratios), "images": written, "epochs": args.epochs},
        rounds=rounds,
        table={
            "columns": [
                "contender",
                "images read",
                "wall s, median (min-max)",
                "CPU s, median",
                "speed vs timm train.py, per round",
            ],
            "rows": rows,
        },
        notes=(
            f"{data_name}, {images} images at {args.image_size}x{args.image_size}: both read the "
            "same train/ and validation/ folders (vitkit's val/ is a link to validation/; the "
            "count vitkit printed is checked against the files). ViT-Ti/16 from scratch, "
            f"{args.epochs} epoch{'s' if args.epochs != 1 else ''}, AdamW lr 1e-3, weight decay 0.05, batch 64, cosine, "
            "random-resized-crop + flip, two loader workers, fp32 on the CPU, one validation "
            f"pass per epoch; whole processes, {args.rounds} rounds alternating the order."
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
