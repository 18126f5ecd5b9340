"""`vitkit demo` (what `make demo` runs): bundled real data -> unbalanced folder -> ViT -> test metrics."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

from vitkit.cli._options import add_options, config_from_args
from vitkit.experiments.demo_settings import (
    DEMO_MODEL,
    DEMO_TRAIN_DEFAULTS,
    DEMO_TRAIN_OPTIONS,
    DemoSettings,
)
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
    from vitkit.experiments.demo import build_demo_data, demo_preset, demo_train_config
    from vitkit.training.trainer import train

    demo, training = settings(args)
    out = Path(demo.out)
    started = time.perf_counter()
    print(f"[1/3] building an unbalanced image folder in {out / 'data'}")
    dataset, info = build_demo_data(demo, seed=training["seed"])
    print(
        f"      {dataset}: train images per class: {info.train_counts} (minority: {info.minority!r})"
    )
    print(f"      test images per class:  {info.test_counts}")
    config = demo_train_config(demo, dataset, info, training)
    shutil.rmtree(config.out, ignore_errors=True)  # a demo always starts afresh
    print(
        f"[2/3] training a small ViT from scratch ({demo_preset(dataset)}, {DEMO_MODEL}) in {config.out}"
    )
    result = train(config)
    print_results(result, config.balance, info.minority)
    best = Path(config.out) / "best"
    print(f"\nmodel saved to {best} (HF format); metrics, curves.png and the confusion")
    print(
        f"matrix are in {config.out}. Evaluate again with: vitkit eval --model {best} --data {info.root}"
    )
    print(f"demo finished in {time.perf_counter() - started:.0f}s")
    return 0


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
