"""PNG figures for training runs: loss/accuracy curves and confusion matrices (matplotlib).

Figures are drawn on a bare ``matplotlib.figure.Figure`` with its own Agg canvas, never through
pyplot: no backend is switched and no global figure list grows, so a library call changes
nothing process-wide and works without a display. Matplotlib is imported on first use, so
``import vitkit`` does not pay for it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vitkit.atomic_files import atomic_write_bytes


def new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Loss (train and val) per epoch and, where the task reports them, validation scores
    (accuracy and macro-F1 for classification), from the epoch records."""
    epochs = [row["epoch"] for row in history]
    scores = [name for name in SCORE_CURVES if history and name in history[0]]
    from matplotlib.ticker import MaxNLocator

    figure = new_figure(10 if scores else 5, 4)
    axes = figure.subplots(1, 2 if scores else 1, squeeze=False)
    loss_axis = axes[0][0]
    loss_axis.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train")
    loss_axis.plot(epochs, [row["val_loss"] for row in history], marker="o", label="val")
    loss_axis.set(xlabel="epoch", ylabel="loss", title="Loss")
    loss_axis.legend()
    if scores:
        score_axis = axes[0][1]
        for name in scores:
            label = SCORE_CURVES[name]
            score_axis.plot(epochs, [row[name] for row in history], marker="o", label=label)
        # Spans the data (rounded out to 0.05): late epochs that differ by 0.01 stay apart.
        low = min(min(row[name] for row in history) for name in scores)
        low = max(0.0, float(np.floor((low - 0.02) * 20) / 20))
        score_axis.set(xlabel="epoch", ylabel="score", title="Validation", ylim=(low, 1.01))
        score_axis.legend()
    for axis in axes[0]:
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs, not 0.5 steps
    figure.tight_layout()
    return save_png(figure, path)


# Epoch-record fields drawn as validation scores, when present (other tasks may add theirs).
SCORE_CURVES = {
    "val_accuracy": "val accuracy",
    "val_macro_f1": "val macro-F1",
    "val_map": "val mAP",
    "val_mean_iou": "val mIoU",
}


def plot_confusion_matrix(
    matrix: np.ndarray | Sequence[Sequence[int]],
    labels: Sequence[str],
    path: str | Path,
    title: str = "Confusion matrix",
) -> Path:
    """Counts with rows = true class, columns = predicted class; cells shaded by row share."""
    counts = np.asarray(matrix)
    row_share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = max(4.0, 0.45 * len(labels) + 2)
    figure = new_figure(side + 1, side)
    axis = figure.subplots()
    image = axis.imshow(row_share, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axis, fraction=0.046, label="share of true class")
    long_names = max((len(label) for label in labels), default=0) > 3  # short ones stay upright
    axis.set_xticks(
        range(len(labels)),
        labels,
        rotation=45 if long_names else 0,
        ha="right" if long_names else "center",
    )
    axis.set_yticks(range(len(labels)), labels)
    axis.set(xlabel="predicted", ylabel="true", title=title)
    if len(labels) <= 30:  # numbers stay legible up to about this many classes
        for row in range(counts.shape[0]):
            for col in range(counts.shape[1]):
                color = "white" if row_share[row, col] > 0.5 else "black"
                axis.text(
                    col,
                    row,
                    str(counts[row, col]),
                    ha="center",
                    va="center",
                    color=color,
                    fontsize=8,
                )
    figure.tight_layout()
    return save_png(figure, path)


def save_png(figure: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())
    return path
