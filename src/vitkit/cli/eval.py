"""`vitkit eval`: accuracy, macro precision/recall/F1, per-class report and confusion matrix."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vitkit.atomic_files import atomic_open
from vitkit.cli._options import add_options, config_from_args
from vitkit.errors import DatasetError, VitkitError
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
scores.csv.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a classifier on an image folder (macro metrics, confusion matrix)",
        description="Evaluate a classifier on a labelled image folder.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data",
        required=True,
        help="image folder (one sub-folder per class), or a label table for a multi-label model",
    )
    parser.add_argument(
        "--split",
        default=None,
        help="sub-folder of DATA to evaluate (default: test/ when present, else DATA itself)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="output folder (default: eval-<split> beside a local model, else ./eval)",
    )
    parser.add_argument("--batch-size", "-b", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes (default 0)")
    parser.add_argument(
        "--on-bad-image",
        default="skip",
        choices=["skip", "fail"],
        help="unreadable images (and bad label-table rows): skip with a report, or stop",
    )
    add_options(parser, LoadSettings, only=EVAL_LOAD_FIELDS)
    parser.set_defaults(func=run)


# The LoadSettings fields evaluation honours (it runs the model's own forward on the data set).
EVAL_LOAD_FIELDS = (
    "model",
    "device",
    "image_size",
    "overrides",
    "problem_type",
    "threshold",
    "tta",
)


def pick_folder(data: Path, split: str | None) -> tuple[Path, str]:
    if split is not None:
        folder = data / split
        if not folder.is_dir():
            raise DatasetError(f"{folder}: no such split folder")
        return folder, split
    if (data / "test").is_dir():
        return data / "test", "test"
    return data, "all"


def run(args: argparse.Namespace) -> int:
    # torch loads here, not at `vitkit --help` time
    from vitkit.cli._eval_multilabel import run_multilabel_eval
    from vitkit.inference import runtime
    from vitkit.inference.classifier import load_settings as load
    from vitkit.inference.tta import AveragedModel
    from vitkit.training import data as vdata
    from vitkit.training.evaluate import (
        ClassificationEvaluator,
        ProcessorTransform,
        evaluate,
        save_eval_outputs,
    )
    from vitkit.training.labels import is_label_table
    from vitkit.training.metrics import format_report

    runtime.tune_process_for_inference(args.device)
    if is_label_table(args.data):  # several labels per image
        return run_multilabel_eval(args, _default_out)
    folder, split = pick_folder(Path(args.data), args.split)
    classifier = load(config_from_args(LoadSettings, args))
    if classifier.require_head().multi_label:
        raise VitkitError(
            f"{classifier.name} is a multi-label (sigmoid) model: evaluate it on a label table "
            "(CSV path,labels or JSONL; see vitkit train --help), not on class folders"
        )
    labels = list(classifier.labels)
    images = readable_samples(folder, labels, classifier.name, args.on_bad_image)
    dataset = vdata.ImageDataset(images, ProcessorTransform(classifier.processor))
    model = classifier.model
    if classifier.tta != "none":  # logits of the mean probabilities over the views
        model = AveragedModel(model, classifier.tta, multi_label=False)
    result = evaluate(
        model,
        dataset,
        ClassificationEvaluator(labels),
        device=classifier.device,
        batch_size=args.batch_size,
        workers=args.workers,
    )
    out = Path(args.out) if args.out else _default_out(classifier.name, split)
    save_eval_outputs(result, labels, out, f"{Path(str(classifier.name)).name} on {folder}")
    write_predictions(out / "predictions.csv", result, [s.path for s in images], labels)
    print(
        f"{classifier.name} on {folder} ({result.report['num_samples']} images), loss {result.loss:.4f}"
    )
    print(format_report(result.report))
    print(f"\nwritten to {out}/ (metrics.json, confusion_matrix.json/.png, predictions.csv)")
    return 0


def readable_samples(folder: Path, labels: list[str], model: str, on_bad_image: str) -> Any:
    """The folder's images labelled by the model's label index (class folders must be labels);
    unreadable images skipped with a warning, or refused (``on_bad_image="fail"``)."""
    from vitkit.training import data as vdata  # torch: not at `vitkit --help` time

    classes = vdata.find_classes(folder)
    unknown = [name for name in classes if name not in labels]
    if unknown:
        raise DatasetError(
            f"{folder}: class folder(s) {unknown} are not labels of {model} "
            f"(its labels: {labels[:20]}{' ...' if len(labels) > 20 else ''}); "
            "folder names must equal the model's id2label names"
        )
    # Folder order -> the model's label index, so the report is in the model's label order.
    samples = [
        vdata.Sample(s.path, labels.index(classes[s.label]))
        for s in vdata.list_samples(folder, classes)
    ]
    if not samples:
        raise DatasetError(f"{folder}: no images")
    scan = vdata.scan_images(samples)
    if scan.bad:
        if on_bad_image == "fail":
            raise DatasetError(scan.report())
        print(f"warning: skipping {scan.report()}")
    return scan.good


def write_predictions(path: Path, result: Any, paths: list[str], labels: list[str]) -> None:
    """predictions.csv: path, true label, predicted label, its probability; one row per image."""
    import csv

    with atomic_open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "true", "predicted", "score"])
        for row, index in enumerate(result.indices):
            predicted = int(result.predictions[row])
            writer.writerow(
                [
                    paths[index],
                    labels[int(result.targets[row])],
                    labels[predicted],
                    f"{result.probabilities[row, predicted]:.6f}",
                ]
            )


def _default_out(model: str, split: str) -> Path:
    path = Path(model)
    return path.parent / f"eval-{split}" if path.is_dir() else Path(f"eval-{split}")
