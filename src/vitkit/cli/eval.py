"""`vitkit eval`: accuracy, macro precision/recall/F1, per-class report and confusion matrix
(``vitkit.evaluate`` does the work; this parses and prints)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vitkit.cli._loading import ENTRY_POINT_DEFAULTS, load_classifier
from vitkit.cli._options import add_options, config_from_args
from vitkit.experiments.evaluation_settings import EvalSettings
from vitkit.inference.settings import LoadSettings

EPILOG = """\
examples:
  vitkit eval --model runs/vit384/best --data slides/            # slides/test/ if it exists
  vitkit eval --model runs/vit384/best --data slides/ --split val
  vitkit eval --model google/vit-base-patch16-224 --data imagenet-sample/ --out eval-base
  vitkit eval --model runs/tiles/best --data tiles/ --tta d4      # mean over flips and turns
  vitkit eval --model runs/tags/best --data tags/                 # tags/test.csv: multi-label

DATA is an image folder (one sub-folder per class, named as the model's labels). When it has
train/ val/ test/ sub-folders, --split picks one (default: test). Images are preprocessed as the
checkpoint's own preprocessor_config.json says. Written to --out: metrics.json,
confusion_matrix.json, confusion_matrix.png and predictions.csv.

A multi-label model is evaluated on a label table (a .csv / .jsonl file, or DATA/test.csv; --split
picks DATA/<split>.csv): mAP, ROC-AUC, macro and micro F1 at the thresholds saved with the model
(or --threshold) and at 0.5, per-label AP / F1 / support. Written: metrics.json, report.txt,
scores.csv. From Python: vitkit.evaluate(model, data).
"""

# The LoadSettings fields evaluation honours: it runs the model's own fp32 forward over a data
# loader (no --precision, --threads or --jpeg-draft there; images are files, not URLs).
EVAL_LOAD_FIELDS = (
    "model",
    "device",
    "image_size",
    "overrides",
    "problem_type",
    "threshold",
    "tta",
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a classifier on an image folder (macro metrics, confusion matrix)",
        description="Evaluate a classifier on a labelled image folder.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser, EvalSettings)
    add_options(parser, LoadSettings, only=EVAL_LOAD_FIELDS, defaults=ENTRY_POINT_DEFAULTS)
    parser.set_defaults(func=run, settings=settings)


def settings(args: argparse.Namespace) -> tuple[LoadSettings, EvalSettings]:
    return config_from_args(LoadSettings, args), config_from_args(EvalSettings, args)


def run(args: argparse.Namespace) -> int:
    # torch loads here, not at `vitkit --help` time
    from vitkit.experiments.evaluation import default_out, evaluate

    load, chosen = settings(args)
    evaluation = evaluate(load_classifier(load), chosen.data, chosen)
    for report in evaluation.skipped:
        print(f"warning: skipping {report}")
    out = evaluation.write(
        Path(chosen.out) if chosen.out else default_out(load.source, evaluation.split)
    )
    print(evaluation.text())
    print(f"\nwritten to {out}/ ({', '.join(evaluation.written())})")
    return 0
