"""Label scarcity: does MAE pre-training on the unlabeled training images help a small ViT?

For each seed: MAE pre-training (``vitkit pretrain``'s library call) on ALL training images,
labels unused; then the same ViT is fine-tuned with 10% and with 100% of the labels, once
from the MAE encoder and once from random weights, with the same recipe, steps and data. The
score is macro-F1 on a fixed, balanced test split that neither step ever sees.

Data: Fashion-MNIST (28x28) when Debian's ``dataset-fashion-mnist`` is installed, else
scikit-learn's digits (8x8, upscaled to 16x16). A seeded, class-balanced subset keeps it
CPU-sized; each seed draws its own 10% of the labels (class-balanced).

Usage:
    python benchmarks/bench_label_scarcity.py --out /tmp/label-scarcity [--seeds 0,1,2]
        [--dataset auto|fashion-mnist|digits] [--train-per-class 500] [--mae-epochs 40] ...

Writes benchmarks/results/label_scarcity.json (every seed and the MAE - scratch gains); everything
else (runs, reconstruction pictures, results.json) stays under --out.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from results_io import median_spread, spread, write_results
from vitkit.experiments.demo_data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    fashion_mnist_available,
    load_digits_arrays,
    read_idx,
)
from vitkit.training.config import TrainConfig
from vitkit.training.tasks.mae import MAEBuilder
from vitkit.training.tasks.mae_config import PretrainConfig
from vitkit.training.trainer import train

FRACTIONS = (0.1, 1.0)


# ---- data ---------------------------------------------------------------------------------------
def load_arrays(dataset: str, train_per_class: int, test_per_class: int) -> dict[str, Any]:
    """Balanced, seeded (seed 0) train and test arrays of the chosen data set."""
    rng = np.random.default_rng(0)
    if dataset == "fashion-mnist":
        pools = {
            split: (
                read_idx(FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz"),
                read_idx(FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz"),
            )
            for split, prefix in (("train", "train"), ("test", "t10k"))
        }
        classes, size = list(FASHION_MNIST_CLASSES), 28
    else:
        images, labels, classes = load_digits_arrays()
        order = rng.permutation(len(labels))
        cut = len(labels) // 2
        pools = {
            "train": (images[order[cut:]], labels[order[cut:]]),
            "test": (images[order[:cut]], labels[order[:cut]]),
        }
        size = 16
    arrays: dict[str, Any] = {"classes": classes, "size": size}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        images, labels = pools[split]
        keep = np.concatenate(
            [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(len(classes))]
        )
        arrays[split] = (images[np.sort(keep)], labels[np.sort(keep)].astype(np.int64))
    return arrays


def write_pngs(
    folder: Path,
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    size: int,
    by_class: bool,
) -> list[Path]:
    """One PNG per image (grey, resized to ``size``): folder/<class>/i.png or folder/i.png."""
    paths = []
    for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        target = folder / classes[label] if by_class else folder / f"part{index % 4}"
        target.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(pixels)
        if picture.size != (size, size):
            picture = picture.resize((size, size), Image.Resampling.BICUBIC)
        path = target / f"{index:05d}.png"
        picture.save(path)
        paths.append(path)
    return paths


def labeled_folder(
    root: Path,
    train_paths: list[Path],
    labels: np.ndarray,
    fraction: float,
    seed: int,
    classes: list[str],
    test_dir: Path,
) -> Path:
    """root/{train/<class>, test -> the shared test folder}: ``fraction`` of each class."""
    if root.exists():
        shutil.rmtree(root)
    rng = np.random.default_rng(1000 + seed)
    for label, name in enumerate(classes):
        members = np.flatnonzero(labels == label)
        chosen = rng.permutation(members)[: max(2, round(fraction * len(members)))]
        (root / "train" / name).mkdir(parents=True)
        for index in chosen:
            (root / "train" / name / train_paths[index].name).symlink_to(train_paths[index])
    (root / "test").symlink_to(test_dir, target_is_directory=True)
    return root


# ---- runs ---------------------------------------------------------------------------------------
def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "hidden_size": args.width,
        "num_hidden_layers": args.depth,
        "num_attention_heads": max(1, args.width // 32),
        "intermediate_size": 4 * args.width,
        "layer_norm_eps": 1e-6,
    }


def run_mae(args: argparse.Namespace, unlabeled: Path, seed: int, size: int, patch: int) -> Path:
    out = Path(args.out) / f"seed{seed}" / "mae"
    cfg = TrainConfig(
        data=str(unlabeled),
        out=str(out),
        preset=f"vit-tiny-patch{patch}-{size}",
        model_overrides=model_overrides(args),
        epochs=args.mae_epochs,
        batch_size=args.mae_batch_size,
        val_fraction=0.05,
        seed=seed,
        device="cpu",
        resume=True,
        progress=False,
    )
    settings = PretrainConfig(
        mask_ratio=args.mask_ratio,
        decoder_depth=args.decoder_depth,
        decoder_width=args.decoder_width,
        norm_pix_loss=args.norm_pix_loss,
        base_lr=args.mae_base_lr,
        pictures=6,
        max_val_images=200,
    )
    if not (out / "best").is_dir() or not _finished(out, args.mae_epochs):
        train(cfg, MAEBuilder(settings))
    return out / "best"


def _finished(out: Path, epochs: int) -> bool:
    metrics = out / "metrics.csv"
    return metrics.is_file() and len(metrics.read_text().splitlines()) > epochs


def run_fine_tune(
    args: argparse.Namespace,
    data: Path,
    out: Path,
    seed: int,
    size: int,
    patch: int,
    start: Path | None,
    epochs: int,
) -> dict[str, Any]:
    """The same recipe for both starts: only the initial encoder differs."""
    result_file = out / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    cfg = TrainConfig(
        data=str(data),
        out=str(out),
        model=str(start) if start is not None else None,
        from_scratch=start is None,
        preset=f"vit-tiny-patch{patch}-{size}",
        model_overrides=model_overrides(args) if start is None else {},
        epochs=epochs,
        batch_size=args.batch_size,
        optimizer="adamw",
        lr=args.lr,
        weight_decay=0.05,
        warmup_fraction=0.1,
        label_smoothing=0.1,
        augment=args.augment,
        mix="none",
        seed=seed,
        device="cpu",
        resume=True,
        progress=False,
    )
    started = time.perf_counter()
    result = train(cfg)
    assert result.test is not None
    record = {
        "macro_f1": result.test.report["macro_f1"],
        "accuracy": result.test.report["accuracy"],
        "best_epoch": result.best_epoch,
        "seconds": round(time.perf_counter() - started, 1),
    }
    result_file.write_text(json.dumps(record) + "\n")
    return record


def run_seed(job: tuple[Any, ...]) -> list[dict[str, Any]]:
    """MAE on every training image, then the four fine-tuning runs of one seed."""
    args, seed, train_paths, train_labels, classes, size, data = job
    torch.set_num_threads(args.threads)  # an entry point (also in worker processes)
    root = Path(args.out)
    encoder = run_mae(args, data / "unlabeled", seed, size, args.patch)
    records = []
    for fraction in FRACTIONS:
        folder = labeled_folder(
            root / f"seed{seed}" / f"labels{fraction:.0%}",
            train_paths,
            train_labels,
            fraction,
            seed,
            classes,
            data / "test",
        )
        epochs = args.epochs_10 if fraction < 1 else args.epochs_100
        for start, init in (("mae", encoder), ("scratch", None)):
            out = root / f"seed{seed}" / f"{start}-{fraction:.0%}-{epochs}ep"
            record = run_fine_tune(args, folder, out, seed, size, args.patch, init, epochs)
            records.append(
                {"seed": seed, "fraction": fraction, "start": start, "epochs": epochs, **record}
            )
            print(
                f"seed {seed} {fraction:.0%} {start}: macro-F1 {record['macro_f1']:.4f}",
                flush=True,
            )
    return records


# ---- report -------------------------------------------------------------------------------------
def publish(results: list[dict[str, Any]], seeds: list[int], notes: str) -> Path:
    """benchmarks/results/label_scarcity.json: test macro-F1 per label fraction and start, and
    the MAE - scratch gain seed by seed."""

    def score(seed: int, fraction: float, start: str) -> float:
        return next(
            r["macro_f1"]
            for r in results
            if r["seed"] == seed and r["fraction"] == fraction and r["start"] == start
        )

    rows, summary = [], {}
    for fraction in FRACTIONS:
        gains = [score(s, fraction, "mae") - score(s, fraction, "scratch") for s in seeds]
        for start in ("mae", "scratch"):
            scores = [score(s, fraction, start) for s in seeds]
            rows.append(
                [
                    f"{fraction:.0%}",
                    "MAE pre-trained" if start == "mae" else "random (scratch)",
                    median_spread(scores, 3),
                    ", ".join(f"{v:.3f}" for v in scores),
                    ", ".join(f"{g:+.3f}" for g in gains) if start == "mae" else "",
                ]
            )
        summary[f"gain_at_{fraction:.0%}"] = spread(gains)
    return write_results(
        "label_scarcity",
        title="Label scarcity: MAE pre-training, then fine-tuning, against training from scratch",
        command="python benchmarks/bench_label_scarcity.py " + " ".join(sys.argv[1:]),
        summary=summary,
        rounds=results,
        table={
            "columns": [
                "labels",
                "start",
                "test macro-F1 (median, min-max)",
                "per seed",
                "MAE - scratch, per seed",
            ],
            "rows": rows,
        },
        notes=notes,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--dataset", default="auto", choices=("auto", "fashion-mnist", "digits"))
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--patch", type=int, default=7)
    parser.add_argument("--mae-epochs", type=int, default=30)
    parser.add_argument("--mae-batch-size", type=int, default=128)
    parser.add_argument(
        "--mae-base-lr",
        type=float,
        default=1.5e-3,
        help="peak lr = this x batch / 256; 10x MAE's 1.5e-4, which left this tiny ViT "
        "under-trained in 20 epochs (see BENCHMARKS.md)",
    )
    parser.add_argument("--mask-ratio", type=float, default=0.75)
    parser.add_argument("--decoder-depth", type=int, default=2)
    parser.add_argument("--decoder-width", type=int, default=64)
    parser.add_argument("--norm-pix-loss", action="store_true")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--augment", default="shift")
    parser.add_argument("--epochs-10", type=int, default=100, help="fine-tune epochs, 10%% labels")
    parser.add_argument("--epochs-100", type=int, default=30, help="fine-tune epochs, all labels")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 is fastest for these tiny models on shared cores)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # an entry point: it may set process-wide settings
    dataset = args.dataset
    if dataset == "auto":
        dataset = "fashion-mnist" if fashion_mnist_available() else "digits"
    seeds = [int(s) for s in args.seeds.split(",")]
    root = Path(args.out)
    arrays = load_arrays(dataset, args.train_per_class, args.test_per_class)
    size, classes = arrays["size"], arrays["classes"]
    data = root / "data"
    if data.exists():
        shutil.rmtree(data)
    train_images, train_labels = arrays["train"]
    train_paths = write_pngs(data / "unlabeled", train_images, train_labels, classes, size, False)
    write_pngs(data / "test", *arrays["test"], classes, size, True)
    started = time.perf_counter()
    jobs = [(args, seed, train_paths, train_labels, classes, size, data) for seed in seeds]
    if args.jobs > 1:  # one process per seed, each on its own torch thread(s)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            per_seed = list(pool.map(run_seed, jobs))
    else:
        per_seed = [run_seed(job) for job in jobs]
    results = [record for records in per_seed for record in records]
    wall = time.perf_counter() - started
    (root / "results.json").write_text(
        json.dumps(
            {"dataset": dataset, "args": vars(args), "results": results, "wall_seconds": wall},
            indent=1,
        )
        + "\n"
    )
    notes = (
        f"{dataset}: {len(train_labels)} training images ({args.train_per_class} per class; the "
        f"MAE pre-trains on all of them, labels unused), {len(arrays['test'][1])} test images; "
        f"ViT {args.width} wide, {args.depth} blocks, patch {args.patch} at {size}x{size}; MAE "
        f"{args.mae_epochs} epochs, fine-tuning {args.epochs_10} epochs (10% of the labels) / "
        f"{args.epochs_100} epochs (100%); {torch.get_num_threads()} torch thread(s) per run; "
        f"wall {wall / 60:.1f} min."
    )
    print(f"wrote {publish(results, seeds, notes)}")


if __name__ == "__main__":
    main()
