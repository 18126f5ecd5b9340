"""``vitkit.evaluate(model, data)``: a saved classifier judged on labelled images.

    import vitkit
    evaluation = vitkit.evaluate("runs/vit384/best", "slides/")   # slides/test/ if it exists
    print(evaluation.text())              # what `vitkit eval` prints
    evaluation.report["macro_f1"]
    evaluation.write("runs/vit384/eval-test")

A single-label model is evaluated on an image folder (one sub-folder per class, named as the
model's labels; its ``train/ val/ test/`` splits picked by ``split``, default ``test``): accuracy,
macro precision / recall / F1, the per-class report and the confusion matrix; ``write`` saves
metrics.json, confusion_matrix.json/.png and predictions.csv. A multi-label model is evaluated
on a label table (a .csv / .jsonl file, or ``DATA/<split>.csv``): mAP, ROC-AUC, macro and micro
F1 at the model's thresholds (or those of ``LoadSettings.threshold``) and at 0.5; ``write``
saves metrics.json, report.txt and scores.csv. Images are preprocessed as the checkpoint's own
preprocessor_config.json says; TTA averages the probabilities over the views.

It lives here, above both ``inference`` (the loaded classifier) and ``training`` (the data
sets, evaluators and metrics).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitkit.atomic_files import atomic_open
from vitkit.errors import DatasetError, VitkitError
from vitkit.experiments.evaluation_settings import EvalSettings
from vitkit.experiments.seg_evaluation import evaluate_masks
from vitkit.inference.classifier import Classifier, load_settings
from vitkit.inference.settings import LoadSettings
from vitkit.inference.tta import AveragedModel
from vitkit.training import data as vdata
from vitkit.training.evaluate import (
    ClassificationEvaluator,
    EvalResult,
    ProcessorTransform,
    save_eval_outputs,
)
from vitkit.training.evaluate import evaluate as run_evaluator
from vitkit.training.labels import find_table, is_label_table, read_label_table, samples
from vitkit.training.metrics import format_multilabel_report, format_report
from vitkit.training.seg_metrics import format_segmentation_report
from vitkit.training.tasks.multilabel import MultiLabelEvaluator
from vitkit.training.tasks.segment import write_segmentation_outputs

__all__ = ["EvalSettings", "Evaluation", "evaluate"]


@dataclass
class Evaluation:
    """One evaluation: which model on which images, the result, and what was skipped."""

    model: str
    data: Path  # the class folder or label table evaluated
    split: str
    multi_label: bool
    labels: list[str]
    result: EvalResult
    tta: str
    thresholds_given: bool = False
    skipped: list[str] = field(default_factory=list)  # reports of unreadable images / rows
    segmentation: bool = False  # a per-pixel model on masks (vitkit.experiments.seg_evaluation)

    @property
    def report(self) -> dict[str, Any]:
        return self.result.report

    @property
    def title(self) -> str:
        return f"{Path(self.model).name} on {self.data}"

    def text(self) -> str:
        """The report ``vitkit eval`` prints: a header line and the metrics table."""
        count = self.report["num_samples"]
        if self.segmentation:
            header = f"{self.model} on {self.data} ({count} images with masks)"
            return f"{header}, loss {self.result.loss:.4f}\n" + format_segmentation_report(
                self.report
            )
        if self.multi_label:
            return (
                f"{self.model} on {self.data} ({count} images), BCE {self.result.loss:.4f}\n"
                f"thresholds: {self.report['thresholds_from']}; tta: {self.tta}\n"
                + format_multilabel_report(self.report)
            )
        header = f"{self.model} on {self.data} ({count} images), loss {self.result.loss:.4f}"
        return header + "\n" + format_report(self.report)

    def written(self) -> tuple[str, ...]:
        """The files ``write`` makes."""
        if self.segmentation:
            return ("metrics.json", "confusion_matrix.json/.png", "per_class_iou.png")
        if self.multi_label:
            return ("metrics.json", "report.txt", "scores.csv")
        return ("metrics.json", "confusion_matrix.json/.png", "predictions.csv")

    def write(self, out: str | Path) -> Path:
        """The evaluation's files in ``out`` (each written whole: a crash leaves none half done)."""
        folder = Path(out)
        if self.segmentation:
            write_segmentation_outputs(self.report, self.result.loss, folder, self.title)
            return folder
        if self.multi_label:
            MultiLabelEvaluator(self.labels).write(self.result, folder, self.title)
        else:
            save_eval_outputs(self.result, self.labels, folder, self.title)
            write_predictions(folder / "predictions.csv", self.result, self.labels)
        return folder


def evaluate(
    model: Classifier | LoadSettings | str | Path,
    data: str | Path,
    settings: EvalSettings | None = None,
    *,
    split: str | None = None,
) -> Evaluation:
    """Evaluate ``model`` (a Classifier, LoadSettings, or a checkpoint ``vitkit.load`` reads)
    on ``data``: an image folder (single-label) or a label table (multi-label). ``settings``:
    batch size, loader workers, what to do with unreadable images (``EvalSettings``);
    ``split`` picks ``data``'s sub-folder or table (default: test when there is one)."""
    chosen = settings or EvalSettings(data=str(data))
    classifier = model if isinstance(model, Classifier) else load_settings(as_settings(model))
    head = classifier.require_head()
    given_split = split if split is not None else chosen.split
    if getattr(classifier.model.capabilities, "dense", False):  # masks, not class folders
        where, name, result = evaluate_masks(
            classifier, Path(data), given_split, chosen.batch_size, chosen.workers
        )
        labels = list(classifier.labels)
        return Evaluation(
            classifier.name, where, name, False, labels, result, "none", segmentation=True
        )
    if is_label_table(str(data)):
        if not head.multi_label:
            raise VitkitError(
                f"{classifier.name} is a single-label (softmax) classifier and {data} is a "
                "multi-label label table: evaluate it on an image folder, or pass --problem-type "
                "multi_label if its head was trained with a sigmoid (BCE) loss"
            )
        return _multi_label(classifier, Path(data), given_split, chosen)
    if head.multi_label:
        raise VitkitError(
            f"{classifier.name} is a multi-label (sigmoid) model: evaluate it on a label table "
            "(CSV path,labels or JSONL; see vitkit train --help), not on class folders"
        )
    return _single_label(classifier, Path(data), given_split, chosen)


def as_settings(model: LoadSettings | str | Path) -> LoadSettings:
    return model if isinstance(model, LoadSettings) else LoadSettings(model=str(model))


def default_out(model: str, split: str) -> Path:
    """``eval-<split>`` beside a local model directory, else in the working directory."""
    path = Path(model)
    return path.parent / f"eval-{split}" if path.is_dir() else Path(f"eval-{split}")


# ---- single-label: a class folder -------------------------------------------------------------
def pick_folder(data: Path, split: str | None) -> tuple[Path, str]:
    if split is not None:
        folder = data / split
        if not folder.is_dir():
            raise DatasetError(f"{folder}: no such split folder")
        return folder, split
    if (data / "test").is_dir():
        return data / "test", "test"
    return data, "all"


def _single_label(
    classifier: Classifier, data: Path, split: str | None, settings: EvalSettings
) -> Evaluation:
    folder, split_name = pick_folder(data, split)
    labels = list(classifier.labels)
    images, skipped = readable_samples(folder, labels, classifier.name, settings.on_bad_image)
    model: Any = classifier.model
    if classifier.tta != "none":  # logits of the mean probabilities over the views
        model = AveragedModel(model, classifier.tta, multi_label=False)
    result = run_evaluator(
        model,
        vdata.ImageDataset(images, ProcessorTransform(classifier.processor)),
        ClassificationEvaluator(labels),
        device=classifier.device,
        batch_size=settings.batch_size,
        workers=settings.workers,
    )
    return Evaluation(
        classifier.name, folder, split_name, False, labels, result, classifier.tta, skipped=skipped
    )


def readable_samples(
    folder: Path, labels: list[str], model: str, on_bad_image: str
) -> tuple[list[vdata.Sample], list[str]]:
    """The folder's images labelled by the model's label index (class folders must be labels),
    and the report of the unreadable ones (skipped, or refused: ``on_bad_image="fail"``)."""
    classes = vdata.find_classes(folder)
    unknown = [name for name in classes if name not in labels]
    if unknown:
        raise DatasetError(
            f"{folder}: class folder(s) {unknown} are not labels of {model} "
            f"(its labels: {labels[:20]}{' ...' if len(labels) > 20 else ''}); "
            "folder names must equal the model's id2label names"
        )
    # Folder order -> the model's label index, so the report is in the model's label order.
    found = [
        vdata.Sample(s.path, labels.index(classes[s.label]))
        for s in vdata.list_samples(folder, classes)
    ]
    if not found:
        raise DatasetError(f"{folder}: no images")
    scan = vdata.scan_images(found)
    return scan.good, _skipped(scan, on_bad_image)


def _skipped(scan: Any, on_bad_image: str) -> list[str]:
    if not scan.bad:
        return []
    if on_bad_image == "fail":
        raise DatasetError(scan.report())
    return [scan.report()]


def write_predictions(path: Path, result: EvalResult, labels: list[str]) -> None:
    """predictions.csv: path, true label, predicted label, its probability; one row per image."""
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "true", "predicted", "score"])
        for row, path_of_row in enumerate(result.paths):
            predicted = int(result.predictions[row])
            writer.writerow(
                [
                    path_of_row,
                    labels[int(result.targets[row])],
                    labels[predicted],
                    f"{result.probabilities[row, predicted]:.6f}",
                ]
            )


# ---- multi-label: a label table ---------------------------------------------------------------
def pick_table(data: Path, split: str | None) -> tuple[Path, str]:
    """The table to evaluate: DATA itself (a file), or DATA/<split>.csv|.jsonl (default test)."""
    if data.is_file():
        return data, split or data.stem
    table = find_table(data, split or "test")
    if table is None:
        raise DatasetError(f"{data}: no {split or 'test'}.csv or .jsonl to evaluate (use --split)")
    return table, split or "test"


def _multi_label(
    classifier: Classifier, data: Path, split: str | None, settings: EvalSettings
) -> Evaluation:
    table, split_name = pick_table(data, split)
    labels = list(classifier.labels)
    read = read_label_table(table, known_labels=labels)
    skipped = []
    if read.problems:
        if settings.on_bad_image == "fail":
            raise DatasetError(read.report())
        skipped.append(read.report())
    scan = vdata.scan_images(samples(read.rows, labels))  # type: ignore[arg-type]
    skipped += _skipped(scan, settings.on_bad_image)
    if not scan.good:
        raise DatasetError(f"{table}: no readable images to evaluate")
    model: Any = classifier.model
    if classifier.tta != "none":
        model = AveragedModel(model, classifier.tta, multi_label=True)
    given = classifier.threshold_given
    thresholds = np.asarray(classifier.require_head().thresholds) if given else None
    result = run_evaluator(
        model,
        vdata.ImageDataset(scan.good, ProcessorTransform(classifier.processor)),
        MultiLabelEvaluator(labels, thresholds=thresholds),
        device=classifier.device,
        batch_size=settings.batch_size,
        workers=settings.workers,
    )
    return Evaluation(
        classifier.name, table, split_name, True, labels, result, classifier.tta, given, skipped
    )
