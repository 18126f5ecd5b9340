"""Per-pixel metrics of a segmentation: one confusion matrix over every labelled pixel of a split.

    confusion[t, p] = pixels of true class t predicted as p (pixels labelled 255 left out)
    IoU_c = tp / (tp + fp + fn)        Dice_c = 2 tp / (2 tp + fp + fn)   (= per-class F1)
    mIoU = mean IoU over the classes that occur in the labels or the predictions
    pixel accuracy = sum(tp) / labelled pixels

Counts are summed over the whole split before any division (the dataset-level mIoU that
mmsegmentation and torchmetrics' ``MulticlassJaccardIndex`` report, not a mean of per-image
scores). A class absent from both labels and predictions has no IoU (``None``) and is left out
of the means, as mmsegmentation's nan-mean does; torchmetrics' macro average would count it as 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vitkit.images.masks import IGNORE_INDEX


def confusion_counts(
    targets: np.ndarray, predictions: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """(classes, classes) int64 counts of (true, predicted) over the pixels not ignored."""
    keep = targets != ignore_index
    truth = targets[keep].astype(np.int64)
    guess = predictions[keep].astype(np.int64)
    if truth.size and (truth.max() >= num_classes or truth.min() < 0):
        raise ValueError(f"mask values must be classes 0..{num_classes - 1} or {ignore_index}")
    flat = np.bincount(truth * num_classes + guess, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def segmentation_report(confusion: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """mIoU, mean Dice, pixel accuracy, per-class IoU / Dice / support, and the matrix."""
    confusion = np.asarray(confusion, dtype=np.int64)
    true_positive = np.diag(confusion).astype(np.float64)
    false_positive = confusion.sum(axis=0) - true_positive
    false_negative = confusion.sum(axis=1) - true_positive
    union = true_positive + false_positive + false_negative
    present = union > 0
    iou = np.where(present, true_positive / np.maximum(union, 1), np.nan)
    dice = np.where(present, 2 * true_positive / np.maximum(union + true_positive, 1), np.nan)
    labelled = int(confusion.sum())
    per_class = {
        label: {
            "iou": _number(iou[index]),
            "dice": _number(dice[index]),
            "support": int(confusion[index].sum()),
            "predicted": int(confusion[:, index].sum()),
        }
        for index, label in enumerate(labels)
    }
    return {
        "mean_iou": float(np.nanmean(iou)) if present.any() else 0.0,
        "mean_dice": float(np.nanmean(dice)) if present.any() else 0.0,
        "pixel_accuracy": float(true_positive.sum() / labelled) if labelled else 0.0,
        "labelled_pixels": labelled,
        "per_class": per_class,
        "labels": list(labels),
        "confusion_matrix": confusion.tolist(),
    }


def _number(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def format_segmentation_report(report: dict[str, Any]) -> str:
    """The report as a small table for the terminal."""
    lines = [
        f"mIoU {report['mean_iou']:.4f}   mean Dice {report['mean_dice']:.4f}   "
        f"pixel accuracy {report['pixel_accuracy']:.4f}   ({report['labelled_pixels']} pixels)",
        f"{'class':<24} {'IoU':>7} {'Dice':>7} {'pixels':>12}",
    ]
    for label, row in report["per_class"].items():
        iou = "-" if row["iou"] is None else f"{row['iou']:.4f}"
        dice = "-" if row["dice"] is None else f"{row['dice']:.4f}"
        lines.append(f"{label[:24]:<24} {iou:>7} {dice:>7} {row['support']:>12}")
    return "\n".join(lines)
