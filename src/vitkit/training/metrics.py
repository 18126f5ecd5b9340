"""Classification metrics: accuracy, macro precision/recall/F1, per-class report, confusion matrix.

Plain numpy, no scikit-learn at run time. Definitions follow scikit-learn's
``classification_report`` (the tests use it as the reference): a class that is never predicted
has precision 0 (``zero_division=0``); macro averages weigh every class equally, which is what an
unbalanced data set needs (a model that ignores a rare class loses a tenth of its macro-F1 with
ten classes, however few images that class has).

The one macro-F1 of vitkit (training, eval, compare, collapse detection, bench agreement): the
mean of the per-class F1 over ALL classes of the model, as scikit-learn's
``f1_score(y_true, y_pred, average="macro", labels=range(num_classes), zero_division=0)``. A
class absent from the split and never predicted counts with F1 0 (scikit-learn without
``labels=`` would skip it and average over the classes it saw).
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


# ---- multi-label: one yes/no decision per label ------------------------------------------------
# Definitions follow scikit-learn (the tests use it as the reference): average_precision_score,
# roc_auc_score, f1_score(zero_division=0) on the decisions ``score >= threshold``. A label with
# no positive image has no AP and no ROC-AUC (scikit-learn warns or raises there); it is left out
# of the macro means and reported as None, with the count of labels that were averaged.


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the precision-recall steps, sum of (R_k - R_k-1) * P_k over distinct scores."""
    truth = np.asarray(y_true, dtype=bool).ravel()
    if not truth.any():
        return None
    true_positives, false_positives, _ = _cumulative_counts(truth, np.asarray(scores).ravel())
    precision = true_positives / (true_positives + false_positives)
    recall = true_positives / true_positives[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U)."""
    truth = np.asarray(y_true, dtype=bool).ravel()
    positives, negatives = int(truth.sum()), int((~truth).sum())
    if positives == 0 or negatives == 0:
        return None
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64).ravel())
    return float((ranks[truth].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _cumulative_counts(
    truth: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true positives, false positives, score) when cutting at each distinct score, high first."""
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_truth = scores[order], truth[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_truth.size - 1]
    true_positives = np.cumsum(sorted_truth)[last_of_tie].astype(np.float64)
    false_positives = last_of_tie + 1 - true_positives
    return true_positives, false_positives, sorted_scores[last_of_tie]


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span (scipy.stats.rankdata 'average')."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], values.size]
    mean_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(values.size)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def best_f1_threshold(y_true: np.ndarray, scores: np.ndarray) -> tuple[float, float] | None:
    """(threshold, F1) that maximises F1 of ``score >= threshold``; None without positives.

    Cuts are tried at every distinct score; the threshold is put halfway to the next lower
    score (not on the score itself), so images just below the cut stay below it. Among equal
    F1 values the highest cut wins (fewer false alarms for the same F1).
    """
    truth = np.asarray(y_true, dtype=bool).ravel()
    if not truth.any():
        return None
    values = np.asarray(scores, dtype=np.float64).ravel()
    true_positives, false_positives, cuts = _cumulative_counts(truth, values)
    f1 = 2 * true_positives / (true_positives + false_positives + truth.sum())
    best = int(np.argmax(f1))
    below = cuts[best + 1] if best + 1 < cuts.size else cuts[best]
    return float((cuts[best] + below) / 2), float(f1[best])


def tune_thresholds(
    y_true: np.ndarray, scores: np.ndarray, default: float = 0.5
) -> tuple[np.ndarray, list[bool]]:
    """Per label, the max-F1 threshold on (validation) data; ``default`` for a label with no
    positive image there. Returns (thresholds, tuned flags)."""
    truth, values = np.asarray(y_true), np.asarray(scores)
    thresholds, tuned = np.full(truth.shape[1], default, dtype=np.float64), []
    for label in range(truth.shape[1]):
        best = best_f1_threshold(truth[:, label], values[:, label])
        tuned.append(best is not None)
        if best is not None:
            thresholds[label] = best[0]
    return thresholds, tuned


def _mean_defined(values: Sequence[float | None]) -> float:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else 0.0


def multilabel_report(
    y_true: np.ndarray,
    scores: np.ndarray,
    thresholds: float | Sequence[float] | np.ndarray,
    labels: Sequence[str],
) -> dict[str, Any]:
    """Everything ``vitkit eval`` reports for a multi-label head, as a JSON-ready dict.

    ``y_true`` (N, labels) 0/1, ``scores`` (N, labels) sigmoid probabilities, decisions at
    ``thresholds``. Keys: ``mAP`` (macro AP), ``macro_f1``, ``micro_f1``, ``macro_precision``,
    ``macro_recall``, ``roc_auc`` (macro), ``exact_match`` (every label right), ``num_samples``,
    ``labels_averaged`` (labels with a positive image: the ones AP/ROC-AUC average over),
    ``per_class`` (label -> ap/roc_auc/precision/recall/f1/support/threshold), ``labels``.
    """
    truth = np.asarray(y_true, dtype=bool)
    values = np.asarray(scores, dtype=np.float64)
    cut = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (truth.shape[1],))
    decided = values >= cut
    true_positives = (decided & truth).sum(axis=0).astype(np.float64)
    predicted, support = decided.sum(axis=0), truth.sum(axis=0)
    precision = _safe_divide(true_positives, predicted.astype(np.float64))
    recall = _safe_divide(true_positives, support.astype(np.float64))
    f1 = _safe_divide(2 * true_positives, (predicted + support).astype(np.float64))
    ap = [average_precision(truth[:, i], values[:, i]) for i in range(truth.shape[1])]
    auc = [roc_auc(truth[:, i], values[:, i]) for i in range(truth.shape[1])]
    micro_denominator = predicted.sum() + support.sum()
    return {
        "num_samples": int(truth.shape[0]),
        "mAP": _mean_defined(ap),
        "roc_auc": _mean_defined(auc),
        "macro_f1": float(f1.mean()),
        "micro_f1": float(2 * true_positives.sum() / micro_denominator)
        if micro_denominator
        else 0.0,
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "exact_match": float((decided == truth).all(axis=1).mean()) if truth.shape[0] else 0.0,
        "labels_averaged": sum(a is not None for a in ap),
        "per_class": {
            label: {
                "ap": ap[i],
                "roc_auc": auc[i],
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
                "threshold": float(cut[i]),
            }
            for i, label in enumerate(labels)
        },
        "labels": list(labels),
    }


def format_multilabel_report(report: dict[str, Any]) -> str:
    """Per-label AP, F1, precision, recall, support and threshold, then the averages."""
    labels = report["labels"]
    width = max([len("macro avg"), *(len(label) for label in labels)])
    lines = [f"{'':>{width}}      AP  ROC-AUC  precision  recall      f1  support  threshold"]

    def number(value: float | None, size: int) -> str:
        return f"{value:{size}.4f}" if value is not None else f"{'-':>{size}}"

    for label in labels:
        row = report["per_class"][label]
        lines.append(
            f"{label:>{width}}  {number(row['ap'], 6)}  {number(row['roc_auc'], 7)}  "
            f"{row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:6.4f}  "
            f"{row['support']:7d}  {row['threshold']:9.4f}"
        )
    lines.append("")
    lines.append(
        f"{'macro avg':>{width}}  {report['mAP']:6.4f}  {report['roc_auc']:7.4f}  "
        f"{report['macro_precision']:9.4f}  {report['macro_recall']:6.4f}  "
        f"{report['macro_f1']:6.4f}  {report['num_samples']:7d}"
    )
    lines.append(
        f"mAP {report['mAP']:.4f} (over {report['labels_averaged']} labels with a positive image), "
        f"macro-F1 {report['macro_f1']:.4f}, micro-F1 {report['micro_f1']:.4f}, "
        f"exact match {report['exact_match']:.4f}"
    )
    return "\n".join(lines)
