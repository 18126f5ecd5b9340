"""Collapse: a distilled run whose student predicts one class (macro-F1 near 0) while the loss
looks fine. ``collapse_report`` reads it off a confusion matrix; ``CollapseVeto`` (the
distillation builder's callback) never keeps a collapsed epoch as the best model, says so
loudly, and ends a run whose every epoch collapsed with a clear error.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vitkit.errors import TrainingError
from vitkit.training.callbacks import Callback
from vitkit.training.evaluate import EvalResult
from vitkit.training.metrics import per_class_scores
from vitkit.training.run import Run
from vitkit.training.state import FitState

# A class with fewer validation images than this cannot show a collapse: on an unbalanced set
# the minority class may have one or two validation images, and missing those says little
# about the model while vetoing every such epoch throws good ones away. It is reported instead.
MIN_COLLAPSE_SUPPORT = 5


@dataclass
class CollapseReport:
    """Classes the model never predicts on a split, and the macro-F1 there.

    ``never_predicted`` holds classes with at least ``min_support`` images on the split (a
    collapse); ``rarely_seen`` the never-predicted classes with fewer (reported, not a collapse).
    """

    never_predicted: list[str] = field(default_factory=list)
    macro_f1: float = 0.0
    rarely_seen: list[str] = field(default_factory=list)

    @property
    def collapsed(self) -> bool:
        return bool(self.never_predicted) or self.macro_f1 <= 0.0

    def message(self, split: str = "validation") -> str:
        parts = []
        if self.never_predicted:
            parts.append(f"never predicts {', '.join(self.never_predicted)}")
        if self.macro_f1 <= 0.0:
            parts.append("macro-F1 is 0")
        return f"COLLAPSED on the {split} split: " + "; ".join(parts)

    def rare_message(self, split: str = "validation") -> str:
        return (
            f"never predicts {', '.join(self.rarely_seen)} on the {split} split, but "
            f"{'that class has' if len(self.rarely_seen) == 1 else 'those classes have'} fewer "
            f"than {MIN_COLLAPSE_SUPPORT} images there: not counted as a collapse"
        )


def collapse_report(
    confusion: np.ndarray | list[list[int]],
    labels: list[str],
    min_support: int = MIN_COLLAPSE_SUPPORT,
) -> CollapseReport:
    """Read a confusion matrix (rows true, columns predicted): which classes get no predictions.

    A never-predicted class counts as a collapse only with ``min_support`` or more true images on
    the split; rarer ones land in ``rarely_seen``.
    """
    matrix = np.asarray(confusion, dtype=np.int64)
    predicted = matrix.sum(axis=0)
    support = matrix.sum(axis=1)
    macro_f1 = float(per_class_scores(matrix)["f1"].mean()) if len(matrix) else 0.0
    # Only classes present on the split can be "never predicted" meaningfully.
    missing = [i for i in range(len(labels)) if predicted[i] == 0 and support[i] > 0]
    return CollapseReport(
        [labels[i] for i in missing if support[i] >= min_support],
        macro_f1,
        [labels[i] for i in missing if support[i] < min_support],
    )


class CollapseVeto(Callback):
    """Never keep a collapsed epoch as the best model, and say so loudly (see collapse_filter);
    with ``raise_when_all_collapsed``, a run that kept no model ends with a TrainingError."""

    def __init__(self, raise_when_all_collapsed: bool = True) -> None:
        self.veto: Callable[[dict[str, Any]], str | None] | None = None
        self.raise_when_all_collapsed = raise_when_all_collapsed

    def on_validation(
        self, run: Run, fit: FitState, record: dict[str, Any], val: EvalResult
    ) -> None:
        if self.veto is None:
            self.veto = collapse_filter(list(val.report["labels"]), speak=run.info.is_main)
        reason = self.veto(val.report)
        if reason is not None:
            record["not_best_because"] = reason

    def on_fit_end(self, run: Run, fit: FitState) -> None:
        finished = fit.epoch == run.cfg.epochs
        if self.raise_when_all_collapsed and finished and fit.best_epoch is None:
            raise TrainingError(
                f"distillation into {run.out} collapsed in every epoch (see metrics.jsonl: "
                "not_best_because); no model was kept. Try --kind soft, a lower --alpha, a lower "
                "--lr, or more epochs"
            )


def collapse_filter(
    labels: list[str], speak: bool = True
) -> Callable[[dict[str, Any]], str | None]:
    """``report -> reason``: veto (and say loudly) any collapsed validation epoch.

    A never-predicted class with too few validation images to judge is mentioned once per run
    (the first epoch it happens), not vetoed.
    """
    mentioned: set[str] = set()

    def veto(report: dict[str, Any]) -> str | None:
        result = collapse_report(report["confusion_matrix"], labels)
        rare = set(result.rarely_seen) - mentioned
        if rare:
            mentioned.update(rare)
            if speak:
                print(f"note: {result.rare_message('validation')}", file=sys.stderr)
        if not result.collapsed:
            return None
        message = result.message("validation")
        if speak:
            print(f"WARNING: {message}; this epoch is not kept as the best model", file=sys.stderr)
        return message

    return veto
