"""The per-class picture of a segmentation evaluation: IoU and Dice of every class (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vitkit.training.plots import new_figure, save_png


def plot_class_scores(report: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Bars of IoU and Dice per class (a class never seen nor predicted has none), mIoU marked."""
    labels = list(report["per_class"])
    rows = [report["per_class"][label] for label in labels]
    iou = np.array([np.nan if r["iou"] is None else r["iou"] for r in rows])
    dice = np.array([np.nan if r["dice"] is None else r["dice"] for r in rows])
    positions = np.arange(len(labels))
    figure = new_figure(max(5.0, 0.6 * len(labels) + 2), 4)
    axis = figure.subplots()
    axis.bar(positions - 0.2, iou, width=0.4, label="IoU")
    axis.bar(positions + 0.2, dice, width=0.4, label="Dice")
    axis.axhline(report["mean_iou"], color="black", linestyle="--", linewidth=1)
    axis.text(
        len(labels) - 0.5,
        report["mean_iou"],
        f" mIoU {report['mean_iou']:.3f}",
        va="bottom",
        ha="right",
    )
    axis.set_xticks(
        positions,
        labels,
        rotation=45 if len(labels) > 6 else 0,
        ha="right" if len(labels) > 6 else "center",
    )
    axis.set(ylim=(0, 1.05), ylabel="score", title=title or "Per-class scores")
    axis.legend(loc="lower right")
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return save_png(figure, path)
