"""`vitkit demo` (what `make demo` runs): bundled real data -> unbalanced folder -> ViT -> test metrics."""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitkit.cli._options import add_options, config_from_args
from vitkit.errors import UsageError, VitkitError
from vitkit.options import option
from vitkit.training.config import TrainConfig

EPILOG = """\
examples:
  vitkit demo                              # digits, a few minutes on 2 CPU cores
  vitkit demo --dataset fashion-mnist      # needs Debian's dataset-fashion-mnist package
  vitkit demo --out runs/demo --epochs 30

What it does, with no network: writes an image folder of real images from scikit-learn's
handwritten digits (or Fashion-MNIST) to OUT/data with train/ and test/ splits and one class cut
to 10% of its training images; trains a small ViT from scratch with oversampling; evaluates the
best epoch on the test split; prints the macro metrics table and a few predictions. The model is
saved in Hugging Face format to OUT/run/best (load it with vitkit.load or transformers).
"""

# A ViT small enough to train on 2 CPU cores in about a minute, tuned on this data (12 runs
# across 4 seeds; see BENCHMARKS.md): the 8x8 digit cut into four 4x4 patches, 2 blocks of width
# 64. More tokens (2x2 or 1x1 patches) or depth learned slower within the time budget.
DEMO_PRESET = "vit-tiny-patch4-8"
DEMO_MODEL: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
}
DEMO_TRAINING: dict[str, Any] = {
    # the paper's patch embedding: the demo's model loads in transformers, and its numbers
    # (README, tests/test_train_digits.py) were measured so
    "patch_embed": "linear",
    "epochs": 12,
    "batch_size": 32,
    "optimizer": "adamw",
    "lr": 3e-3,
    "warmup_fraction": 0.1,
    "label_smoothing": 0.1,
    "mix": "none",
}


@dataclass(frozen=True)
class DemoSettings:
    out: str = option("runs/demo", "output folder", group="demo")
    dataset: str = option(
        "digits",
        "digits (always there), fashion-mnist (Debian package), auto = fashion-mnist when "
        "installed",
        group="demo",
        choices=("digits", "fashion-mnist", "auto"),
    )
    fashion_mnist_dir: str | None = option(
        None,
        "folder with Fashion-MNIST's *-ubyte.gz files",
        group="demo",
        default_help="/usr/share/datasets/fashion-mnist",
    )

    def __post_init__(self) -> None:
        if self.fashion_mnist_dir is not None and self.dataset == "digits":
            raise UsageError("--fashion-mnist-dir needs --dataset fashion-mnist or auto")


# The training options the demo shares with `vitkit train`, at the demo's own defaults.
DEMO_TRAIN_OPTIONS = ("epochs", "balance", "seed", "device", "progress")
DEMO_TRAIN_DEFAULTS = {"epochs": DEMO_TRAINING["epochs"], "balance": "oversample", "device": "cpu"}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train and evaluate a small ViT on bundled real data (no network)",
        description="Build an unbalanced image folder from bundled real data, train a small ViT, "
        "evaluate it on the test split and save it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser, DemoSettings)
    add_options(parser, TrainConfig, only=DEMO_TRAIN_OPTIONS, defaults=DEMO_TRAIN_DEFAULTS)
    parser.set_defaults(func=run, settings=settings)


def settings(args: argparse.Namespace) -> tuple[DemoSettings, dict[str, Any]]:
    """The demo's own settings and the training options it passes on (by TrainConfig name)."""
    training = {name: getattr(args, name) for name in DEMO_TRAIN_OPTIONS}
    return config_from_args(DemoSettings, args), training


def run(args: argparse.Namespace) -> int:
    # torch and the trainer load when the command runs, not for `vitkit --help`
    from vitkit.experiments.demo_data import build_demo_folder
    from vitkit.training.trainer import train

    demo, _ = settings(args)
    dataset, fashion_dir = chosen_dataset(demo)
    out = Path(demo.out)
    started = time.perf_counter()
    print(f"[1/3] building an unbalanced image folder from {dataset} in {out / 'data'}")
    info = build_demo_folder(
        out / "data", dataset, size=32, seed=args.seed, fashion_mnist_dir=fashion_dir
    )
    print(f"      train images per class: {info.train_counts} (minority: {info.minority!r})")
    print(f"      test images per class:  {info.test_counts}")
    # 28x28 clothes need more than the digits' 8x8: 16x16 input, 16 tokens
    preset_name = DEMO_PRESET if dataset == "digits" else "vit-tiny-patch4-16"
    run_dir = out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)  # a demo always starts afresh
    config = TrainConfig(
        data=str(info.root),
        out=str(run_dir),
        from_scratch=True,
        preset=preset_name,
        model_overrides=dict(DEMO_MODEL),
        augment="none",  # flips would turn a 6 into a 9; and a short run gains little from crops
        balance=args.balance,
        seed=args.seed,
        device=args.device,
        progress=args.progress,
        log_every=5,
        **{**DEMO_TRAINING, "epochs": args.epochs},
    )
    print(f"[2/3] training a small ViT from scratch ({preset_name}, {DEMO_MODEL}) in {run_dir}")
    result = train(config)
    print_results(result, args.balance, info.minority)
    print(f"\nmodel saved to {run_dir / 'best'} (HF format); metrics, curves.png and the confusion")
    print(
        f"matrix are in {run_dir}. Evaluate again with: vitkit eval --model {run_dir / 'best'} --data {info.root}"
    )
    print(f"demo finished in {time.perf_counter() - started:.0f}s")
    return 0


def chosen_dataset(args: DemoSettings) -> tuple[str, Path]:
    """``--dataset`` resolved ("auto": Fashion-MNIST where Debian's package is installed, else
    the bundled digits) and the Fashion-MNIST folder; a clear error where it is asked for and
    missing."""
    from vitkit.experiments.demo_data import FASHION_MNIST_DIR, fashion_mnist_available

    fashion_dir = Path(args.fashion_mnist_dir) if args.fashion_mnist_dir else FASHION_MNIST_DIR
    dataset = args.dataset
    if dataset == "auto":
        dataset = "fashion-mnist" if fashion_mnist_available(fashion_dir) else "digits"
    if dataset == "fashion-mnist" and not fashion_mnist_available(fashion_dir):
        raise VitkitError(
            f"Fashion-MNIST is not in {fashion_dir}: install Debian's package "
            "(sudo apt-get install dataset-fashion-mnist), pass --fashion-mnist-dir, "
            "or run the demo on the bundled digits (the default)"
        )
    return dataset, fashion_dir


def print_results(result: Any, balance: str, minority: str | None) -> None:
    """The test report, the macro table, the minority's recall and a few test predictions."""
    from vitkit.training.metrics import format_report, macro_table

    assert result.test is not None, "the demo folder always has a test split"
    report = result.test.report
    print(f"\n[3/3] test split, best epoch {result.best_epoch} (lowest validation loss)")
    print(format_report(report))
    print()
    print(macro_table({f"ViT from scratch ({balance})": report}))
    if minority is not None:
        print(
            f"\nminority class {minority!r}: recall {report['per_class'][minority]['recall']:.3f}"
        )
    print("\na few test predictions:")
    labels, test = result.labels, result.test
    for row in range(0, len(test.paths), max(1, len(test.paths) // 8))[:8]:
        truth, predicted = labels[int(test.targets[row])], labels[int(test.predictions[row])]
        score = float(test.probabilities[row].max())
        mark = "ok  " if truth == predicted else "MISS"
        print(f"  {mark} {test.paths[row]}: true {truth}, predicted {predicted} ({score:.2f})")
