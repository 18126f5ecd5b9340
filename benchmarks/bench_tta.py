"""Test-time augmentation on a task with no "up": the seed-augmented demo ViT on turned digits.

Usage: python benchmarks/bench_tta.py [--out runs/bench-tta] [--seeds 0,1] [--epochs 30]

For each seed: the demo's unbalanced digits folder (as `vitkit demo` builds it), the demo's ViT
trained from scratch with ``--augment seed`` (flips + RandomRotate90: every orientation seen in
training), then its best epoch scored on the test split twice over: upright, and with every image
turned / mirrored by a seeded random element of D4 (the same 8 orientations ``--tta d4`` averages
over), each with ``tta none`` and ``tta d4``. Writes benchmarks/results/tta.json: test accuracy and
macro-F1, and the forward time per image of each mode.

Digits are not truly free of orientation (a 6 turned twice is a 9), so no mode can be perfect on
the turned split; what TTA can remove is the model's disagreement between orientations.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vitkit
from results_io import median_spread, spread, write_results
from vitkit.experiments.demo_data import build_demo_folder
from vitkit.experiments.demo_settings import DEMO_MODEL, DEMO_PRESET, DEMO_TRAINING
from vitkit.training.metrics import classification_report
from vitkit.training.trainer import TrainConfig, train

D4 = [  # PIL transposes for the 8 orientations
    [],
    [Image.Transpose.ROTATE_90],
    [Image.Transpose.ROTATE_180],
    [Image.Transpose.ROTATE_270],
    [Image.Transpose.FLIP_LEFT_RIGHT],
    [Image.Transpose.TRANSPOSE],
    [Image.Transpose.FLIP_TOP_BOTTOM],
    [Image.Transpose.TRANSVERSE],
]


def test_images(root: Path, classes: list[str]) -> tuple[list[Image.Image], list[int]]:
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / "test" / name).glob("*.png")):
            images.append(Image.open(path).convert("RGB"))
            labels.append(label)
    return images, labels


def turned(images: list[Image.Image], seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    out = []
    for image in images:
        for transpose in D4[int(rng.integers(8))]:
            image = image.transpose(transpose)
        out.append(image)
    return out


def score(model_dir: Path, images: list[Image.Image], labels: list[int], mode: str) -> dict:
    classifier = vitkit.load(model_dir, device="cpu", tta=mode, threads="auto")  # as the CLI
    pixels = classifier.prepare(images)
    started = time.perf_counter()
    probabilities = torch.cat([classifier.probabilities(b) for b in pixels.split(64)])
    seconds = time.perf_counter() - started
    report = classification_report(labels, probabilities.argmax(-1).numpy(), classifier.labels)
    return {
        "accuracy": report["accuracy"],
        "macro_f1": report["macro_f1"],
        "ms_per_image": 1000 * seconds / len(images),
    }


def run_seed(out: Path, seed: int, epochs: int) -> dict:
    data = build_demo_folder(out / f"data-{seed}", "digits", size=32, seed=seed)
    settings = {**DEMO_TRAINING, "epochs": epochs}
    config = TrainConfig(
        data=str(data.root),
        out=str(out / f"run-{seed}"),
        from_scratch=True,
        preset=DEMO_PRESET,
        model_overrides=dict(DEMO_MODEL),
        augment="seed",
        balance="oversample",
        seed=seed,
        device="cpu",
        progress=False,
        resume=True,  # a re-run reuses (or finishes) the seed's training
        **settings,
    )
    started = time.perf_counter()
    result = train(config)
    train_seconds = time.perf_counter() - started
    images, labels = test_images(data.root, data.classes)
    rows = {}
    for split, shown in (("upright", images), ("turned", turned(images, seed))):
        for mode in ("none", "d4"):
            rows[f"{split}/{mode}"] = score(result.out / "best", shown, labels, mode)
    return {"seed": seed, "best_epoch": result.best_epoch, "train_s": train_seconds, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-tta")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = [run_seed(out, int(s), args.epochs) for s in args.seeds.split(",")]
    names = list(results[0]["rows"])
    rows = []
    for name in names:
        split, mode = name.split("/")
        f1 = [r["rows"][name]["macro_f1"] for r in results]
        rows.append(
            [
                split,
                mode,
                median_spread([r["rows"][name]["accuracy"] for r in results], 3),
                median_spread(f1, 3),
                " / ".join(f"{v:.3f}" for v in f1),
                median_spread([r["rows"][name]["ms_per_image"] for r in results], 3),
            ]
        )
    path = write_results(
        "tta",
        title="Test-time augmentation on turned digits",
        command="python benchmarks/bench_tta.py " + " ".join(sys.argv[1:]),
        summary={name: spread([r["rows"][name]["macro_f1"] for r in results]) for name in names},
        rounds=results,
        table={
            "columns": [
                "test images",
                "tta",
                "accuracy (median, min-max)",
                "macro-F1 (median, min-max)",
                "macro-F1 per seed",
                "ms / image (forward)",
            ],
            "rows": rows,
        },
        notes=(
            f"The demo's digits ViT trained with `--augment seed` ({args.epochs} epochs, seeds "
            f"{args.seeds}), scored on the upright test digits and on the same digits each turned "
            "or mirrored at random, without TTA and with `--tta d4`."
        ),
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
