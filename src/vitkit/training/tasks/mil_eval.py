"""How a slide-level model is judged: AUC, balanced accuracy, macro-F1, bootstrap intervals.

Definitions follow scikit-learn (the tests use it as the reference): ``roc_auc_score`` (binary:
of the positive class's probability; several classes: the mean of the one-vs-rest AUCs; several
labels: the mean over labels), ``balanced_accuracy_score`` (the mean recall over the classes
present), ``f1_score(average="macro")`` (over the classes present in the truth or the
predictions). Decisions are the arg-max class, or ``score >= 0.5`` per label.

The test report adds 95% intervals: ``bootstrap`` resamples of the test slides with
replacement (seeded), each metric's 2.5th and 97.5th percentile over the resamples where it is
defined (an AUC needs both classes).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vitkit.atomic_files import atomic_write_text
from vitkit.training.evaluate import EvalResult
from vitkit.training.metrics import confusion_matrix, roc_auc
from vitkit.training.plots import plot_confusion_matrix

METRICS = ("auc", "balanced_accuracy", "macro_f1")
THRESHOLD = 0.5


# ---- the metrics ------------------------------------------------------------------------------
def slide_metrics(
    targets: np.ndarray, scores: np.ndarray, multi_label: bool
) -> dict[str, float | None]:
    """AUC, balanced accuracy, macro-F1 and accuracy of slide-level scores."""
    if multi_label:
        return _multi_label_metrics(targets.astype(bool), scores)
    targets = targets.astype(np.int64)
    classes = scores.shape[1]
    predicted = scores.argmax(1)
    matrix = confusion_matrix(targets, predicted, classes).astype(np.float64)
    support, chosen, hits = matrix.sum(1), matrix.sum(0), np.diag(matrix)
    present = support > 0
    recall = np.divide(hits, support, out=np.zeros(classes), where=present)
    precision = np.divide(hits, chosen, out=np.zeros(classes), where=chosen > 0)
    f1 = np.divide(
        2 * precision * recall,
        precision + recall,
        out=np.zeros(classes),
        where=precision + recall > 0,
    )
    if classes == 2:
        auc = roc_auc(targets == 1, scores[:, 1])
    else:
        auc = _mean_defined([roc_auc(targets == c, scores[:, c]) for c in range(classes)])
    return {
        "auc": auc,
        "balanced_accuracy": float(recall[present].mean()),
        "macro_f1": float(f1[present | (chosen > 0)].mean()),
        "accuracy": float(hits.sum() / matrix.sum()),
    }


def _multi_label_metrics(truth: np.ndarray, scores: np.ndarray) -> dict[str, float | None]:
    decided = scores >= THRESHOLD
    hits = (truth & decided).sum(0).astype(np.float64)
    positives, chosen = truth.sum(0).astype(np.float64), decided.sum(0).astype(np.float64)
    negatives = len(truth) - positives
    true_negatives = (~truth & ~decided).sum(0).astype(np.float64)
    f1 = np.divide(
        2 * hits, positives + chosen, out=np.zeros_like(hits), where=positives + chosen > 0
    )
    sensitivity = np.divide(hits, positives, out=np.zeros_like(hits), where=positives > 0)
    specificity = np.divide(true_negatives, negatives, out=np.zeros_like(hits), where=negatives > 0)
    return {
        "auc": _mean_defined([roc_auc(truth[:, i], scores[:, i]) for i in range(truth.shape[1])]),
        "balanced_accuracy": float(((sensitivity + specificity) / 2).mean()),
        "macro_f1": float(f1.mean()),
        "accuracy": float((decided == truth).all(1).mean()),
    }


def _mean_defined(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def bootstrap_intervals(
    targets: np.ndarray,
    scores: np.ndarray,
    multi_label: bool,
    resamples: int,
    seed: int = 0,
) -> dict[str, list[float] | None]:
    """Each metric's 95% percentile interval over ``resamples`` bootstrap draws of the slides."""
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {name: [] for name in METRICS}
    for _ in range(resamples):
        pick = rng.integers(0, len(targets), len(targets))
        values = slide_metrics(targets[pick], scores[pick], multi_label)
        for name in METRICS:
            value = values[name]
            if value is not None:
                draws[name].append(value)
    return {
        name: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v else None
        for name, v in draws.items()
    }


# ---- the evaluator ----------------------------------------------------------------------------
class MILEvaluator:
    """Plain cross-entropy (or BCE over labels) per slide, the slide's probabilities, and the
    metrics above. ``bootstrap`` resamples are drawn for the files of a test pass."""

    def __init__(
        self, labels: list[str], *, multi_label: bool, bootstrap: int = 1000, seed: int = 0
    ):
        self.labels = list(labels)
        self.multi_label = multi_label
        self.bootstrap = bootstrap
        self.seed = seed

    def batch(
        self, model: nn.Module, features: torch.Tensor, targets: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        logits = model(features).logits.float()
        if self.multi_label:
            loss = F.binary_cross_entropy_with_logits(
                logits, targets.float(), reduction="none"
            ).mean(-1)
            return {"loss": loss, "probabilities": logits.sigmoid()}
        loss = F.cross_entropy(logits, targets, reduction="none")
        return {"loss": loss, "probabilities": logits.softmax(-1)}

    def report(self, outputs: dict[str, np.ndarray], targets: np.ndarray) -> dict[str, Any]:
        report: dict[str, Any] = dict(
            slide_metrics(targets, outputs["probabilities"], self.multi_label)
        )
        report["num_slides"] = len(targets)
        report["labels"] = self.labels
        return report

    def scalars(self, report: dict[str, Any]) -> dict[str, float]:
        return {name: report[name] for name in METRICS if report.get(name) is not None}

    def write(self, result: EvalResult, directory: Path, title: str) -> None:
        """metrics.json (with 95% intervals), predictions.csv and, for classes, the confusion
        matrix (json and png)."""
        directory.mkdir(parents=True, exist_ok=True)
        scores = result.outputs["probabilities"]
        intervals = bootstrap_intervals(
            result.targets, scores, self.multi_label, self.bootstrap, self.seed
        )
        metrics = {"title": title, "loss": result.loss, **result.report}
        metrics["ci95"] = intervals
        metrics["bootstrap_resamples"] = self.bootstrap
        atomic_write_text(directory / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        atomic_write_text(directory / "predictions.csv", self.predictions_csv(result))
        if not self.multi_label:
            matrix = confusion_matrix(result.targets, scores.argmax(1), len(self.labels))
            record = {
                "labels": self.labels,
                "matrix": matrix.tolist(),
                "rows": "true",
                "columns": "predicted",
            }
            atomic_write_text(directory / "confusion_matrix.json", json.dumps(record) + "\n")
            plot_confusion_matrix(
                matrix.tolist(), self.labels, directory / "confusion_matrix.png", title
            )

    def predictions_csv(self, result: EvalResult) -> str:
        """slide, true, predicted, one probability column per class."""
        names: Callable[[np.ndarray], str]
        if self.multi_label:

            def names(row: np.ndarray) -> str:
                return ";".join(
                    label for label, v in zip(self.labels, row, strict=True) if v >= THRESHOLD
                )
        else:

            def names(row: np.ndarray) -> str:
                return self.labels[int(np.argmax(row))]

        table = io.StringIO(newline="")
        writer = csv.writer(table, lineterminator="\n")
        writer.writerow(["slide", "true", "predicted", *(f"prob_{label}" for label in self.labels)])
        for slide, target, scores in zip(
            result.paths, result.targets, result.outputs["probabilities"], strict=True
        ):
            truth = names(target) if self.multi_label else self.labels[int(target)]
            writer.writerow([slide, truth, names(scores), *(f"{s:.6f}" for s in scores)])
        return table.getvalue()
