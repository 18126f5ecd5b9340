"""Classification metrics: accuracy, macro precision/recall/F1, per-class report, confusion matrix.

Plain numpy, no scikit-learn at run time. Definitions follow scikit-learn's
``classification_report`` (the tests use it as the reference): a class that is never predicted
has precision 0 (``zero_division=0``); macro averages weigh every class equally, which is what an
unbalanced data set needs (a model that ignores a rare class loses a tenth of its macro-F1 with
ten classes, however few images that class has).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def confusion_matrix(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, num_classes: int
) -> np.ndarray:
    """``matrix[true, predicted]`` counts, shape (num_classes, num_classes), int64."""
    true = np.asarray(y_true, dtype=np.int64).ravel()
    pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} labels but y_pred has {pred.size}")
    for name, values in (("y_true", true), ("y_pred", pred)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} holds a class index outside [0, {num_classes})")
    flat = np.bincount(true * num_classes + pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    out = np.zeros_like(numerator, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def per_class_scores(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support of every class from a confusion matrix."""
    matrix = np.asarray(matrix, dtype=np.float64)
    true_positive = np.diag(matrix)
    predicted = matrix.sum(axis=0)
    support = matrix.sum(axis=1)
    precision = _safe_divide(true_positive, predicted)
    recall = _safe_divide(true_positive, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)}


def classification_report(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    labels: Sequence[str],
) -> dict[str, Any]:
    """Everything ``vitkit eval`` reports, as a JSON-ready dict.

    Keys: ``accuracy``, ``macro_precision``, ``macro_recall``, ``macro_f1``, ``num_samples``,
    ``per_class`` (label -> precision/recall/f1/support), ``labels``, ``confusion_matrix``
    (rows = true class, columns = predicted class).
    """
    matrix = confusion_matrix(y_true, y_pred, len(labels))
    scores = per_class_scores(matrix)
    total = int(matrix.sum())
    return {
        "num_samples": total,
        "accuracy": float(np.trace(matrix) / total) if total else 0.0,
        "macro_precision": float(scores["precision"].mean()),
        "macro_recall": float(scores["recall"].mean()),
        "macro_f1": float(scores["f1"].mean()),
        "per_class": {
            label: {
                "precision": float(scores["precision"][i]),
                "recall": float(scores["recall"][i]),
                "f1": float(scores["f1"][i]),
                "support": int(scores["support"][i]),
            }
            for i, label in enumerate(labels)
        },
        "labels": list(labels),
        "confusion_matrix": matrix.tolist(),
    }


def format_report(report: dict[str, Any]) -> str:
    """The per-class table plus the macro line, as fixed-width text for a terminal."""
    labels = report["labels"]
    width = max([len("macro avg"), *(len(label) for label in labels)])
    lines = [f"{'':>{width}}  precision  recall  f1-score  support"]
    for label in labels:
        row = report["per_class"][label]
        lines.append(
            f"{label:>{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  "
            f"{row['f1']:8.4f}  {row['support']:7d}"
        )
    lines.append("")
    lines.append(
        f"{'macro avg':>{width}}  {report['macro_precision']:9.4f}  {report['macro_recall']:6.4f}  "
        f"{report['macro_f1']:8.4f}  {report['num_samples']:7d}"
    )
    lines.append(
        f"{'accuracy':>{width}}  {'':9}  {'':6}  {report['accuracy']:8.4f}  {report['num_samples']:7d}"
    )
    return "\n".join(lines)


def macro_table(rows: dict[str, dict[str, Any]]) -> str:
    """A Markdown table with one row per model: Accuracy, F1, Precision, Recall (macro)."""
    lines = ["| Model | Accuracy | F1 | Precision | Recall |", "|---|---|---|---|---|"]
    for name, report in rows.items():
        lines.append(
            f"| {name} | {report['accuracy']:.4f} | {report['macro_f1']:.4f} | "
            f"{report['macro_precision']:.4f} | {report['macro_recall']:.4f} |"
        )
    return "\n".join(lines)
