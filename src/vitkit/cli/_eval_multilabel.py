"""`vitkit eval` on a label table: a multi-label model's mAP, F1 at its thresholds, ROC-AUC."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vitkit.errors import VitkitError


def pick_table(data: Path, split: str | None) -> tuple[Path, str]:
    """The table to evaluate: DATA itself (a file), or DATA/<split>.csv|.jsonl (default test)."""
    from vitkit.training.data import DatasetError
    from vitkit.training.labels import find_table

    if data.is_file():
        return data, split or data.stem
    table = find_table(data, split or "test")
    if table is None:
        raise DatasetError(f"{data}: no {split or 'test'}.csv or .jsonl to evaluate (use --split)")
    return table, split or "test"


def run_multilabel_eval(args: argparse.Namespace, out_for: Any) -> int:
    """Evaluate ``args.model`` on the label table of ``args.data``; ``out_for(model, split)`` is
    the default output folder."""
    import numpy as np

    from vitkit.cli._options import config_from_args
    from vitkit.inference.classifier import load_settings
    from vitkit.inference.settings import LoadSettings
    from vitkit.inference.tta import AveragedModel
    from vitkit.training import data as vdata
    from vitkit.training.evaluate import ProcessorTransform, evaluate
    from vitkit.training.labels import read_label_table, samples
    from vitkit.training.metrics import format_multilabel_report
    from vitkit.training.tasks.multilabel import MultiLabelEvaluator

    table, split = pick_table(Path(args.data), args.split)
    classifier = load_settings(config_from_args(LoadSettings, args))
    head = classifier.require_head()
    if not head.multi_label:
        raise VitkitError(
            f"{classifier.name} is a single-label (softmax) classifier and {table} is a multi-label "
            "label table: evaluate it on an image folder, or pass --problem-type multi_label if "
            "its head was trained with a sigmoid (BCE) loss"
        )
    labels = list(classifier.labels)
    read = read_label_table(table, known_labels=labels)
    if read.problems:
        if args.on_bad_image == "fail":
            raise vdata.DatasetError(read.report())
        print(f"warning: skipping {read.report()}")
    scan = vdata.scan_images(samples(read.rows, labels))  # type: ignore[arg-type]
    if scan.bad:
        if args.on_bad_image == "fail":
            raise vdata.DatasetError(scan.report())
        print(f"warning: skipping {scan.report()}")
    if not scan.good:
        raise vdata.DatasetError(f"{table}: no readable images to evaluate")
    model = classifier.model
    if classifier.tta != "none":
        model = AveragedModel(model, classifier.tta, multi_label=True)
    given = None if args.threshold is None else np.asarray(head.thresholds)
    result = evaluate(
        model,
        vdata.ImageDataset(scan.good, ProcessorTransform(classifier.processor)),
        MultiLabelEvaluator(labels, thresholds=given),
        device=classifier.device,
        batch_size=args.batch_size,
        workers=args.workers,
    )
    out = Path(args.out) if args.out else out_for(classifier.name, split)
    title = f"{Path(str(classifier.name)).name} on {table}"
    MultiLabelEvaluator(labels).write(result, out, title)
    print(
        f"{classifier.name} on {table} ({result.report['num_samples']} images), BCE {result.loss:.4f}"
    )
    print(f"thresholds: {result.report['thresholds_from']}; tta: {classifier.tta}")
    print(format_multilabel_report(result.report))
    print(f"\nwritten to {out}/ (metrics.json, report.txt, scores.csv)")
    return 0
