"""What a classification head's numbers mean: softmax over exclusive classes, or one sigmoid per label.

A ``Head`` turns logits into probabilities and probabilities into the answer a user reads:

- single-label (softmax): the top-k ``{"label", "score"}``, best first, exactly what transformers'
  ``pipeline("image-classification")`` returns;
- multi-label (sigmoid): every label ``{"label", "score", "threshold", "positive"}``, best first,
  where ``positive`` says the score reached the label's decision threshold. The labels that pass
  are never cut by ``top_k``; a top_k of None lists every label.

Which one a checkpoint gets (``head_kind``), first rule that applies:

1. an explicit choice (``vitkit.load(..., problem_type=...)``, ``--problem-type``): for foreign
   files with no config (timm, .npz) or configs that lack the key;
2. config.json's ``problem_type`` (HF's key; vitkit writes it for every head it trains);
3. decision thresholds in config.json's ``"vitkit"`` section: only multi-label heads have them,
   so a config that lost its ``problem_type`` still gets sigmoid;
4. transformers' own rule (``pipeline`` parity): one label -> sigmoid, more -> softmax.

Rule 3 goes beyond transformers, whose pipeline would apply softmax there; rule 4 is why a
multi-label checkpoint saved without ``problem_type`` and without thresholds gets softmax in both
libraries: nothing in the files says otherwise (the weights cannot), so pass ``problem_type``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from vitkit.errors import HeadError
from vitkit.inference.settings import DEFAULT_TOP_K
from vitkit.inference.settings import parse_thresholds as parse_thresholds

SINGLE_LABEL = "single_label_classification"
MULTI_LABEL = "multi_label_classification"
DEFAULT_THRESHOLD = 0.5
# Short names accepted wherever a problem type is chosen by hand (CLI, vitkit.load).
PROBLEM_TYPE_ALIASES = {
    "single_label": SINGLE_LABEL,
    "multi_label": MULTI_LABEL,
    SINGLE_LABEL: SINGLE_LABEL,
    MULTI_LABEL: MULTI_LABEL,
}
Prediction = dict[str, Any]
HeadKind = Literal["softmax", "sigmoid"]
# One threshold for every label, one per label in label order, or some labels by name.
Thresholds = float | Sequence[float] | Mapping[str, float]


def normalize_problem_type(problem_type: str | None) -> str | None:
    """HF's name for ``problem_type`` (``multi_label`` -> ``multi_label_classification``)."""
    if problem_type is None:
        return None
    if problem_type not in PROBLEM_TYPE_ALIASES:
        raise HeadError(
            f"problem type {problem_type!r}: use single_label or multi_label "
            f"({SINGLE_LABEL} / {MULTI_LABEL})"
        )
    return PROBLEM_TYPE_ALIASES[problem_type]


def head_kind(config: Any, problem_type: str | None = None) -> HeadKind:
    """softmax or sigmoid for a model config (the rules in the module docstring)."""
    chosen = normalize_problem_type(problem_type) or getattr(config, "problem_type", None)
    if chosen == "regression":
        raise HeadError(
            "this checkpoint's config.json says problem_type 'regression': vitkit classifies "
            "(softmax or sigmoid heads); set problem_type to a classification type if that is "
            "what the head was trained for"
        )
    if chosen == MULTI_LABEL:
        return "sigmoid"
    if chosen == SINGLE_LABEL:
        return "softmax"
    if getattr(config, "thresholds", None) is not None:
        return "sigmoid"
    return "sigmoid" if getattr(config, "num_labels", 0) == 1 else "softmax"


def as_threshold_vector(
    thresholds: float | Sequence[float] | None, num_labels: int
) -> list[float] | None:
    """One threshold per label from None, a float, or a sequence of ``num_labels`` floats."""
    if thresholds is None:
        return None
    values = (
        [float(thresholds)] * num_labels
        if isinstance(thresholds, int | float)
        else [float(t) for t in thresholds]
    )
    if len(values) != num_labels:
        raise HeadError(
            f"{len(values)} thresholds for {num_labels} labels: give one threshold, or one per label"
        )
    if any(not 0.0 <= value <= 1.0 for value in values):
        raise HeadError(f"thresholds are probabilities: each must be in [0, 1], got {values}")
    return values


@dataclass(frozen=True)
class Head:
    """The meaning of a classification head: its labels, activation and decision thresholds."""

    labels: tuple[str, ...]
    kind: HeadKind = "softmax"
    thresholds: tuple[float, ...] | None = None  # per label; sigmoid heads only

    @property
    def multi_label(self) -> bool:
        return self.kind == "sigmoid"

    @property
    def problem_type(self) -> str:
        return MULTI_LABEL if self.multi_label else SINGLE_LABEL

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., labels) logits -> softmax over labels, or one sigmoid per label (float32)."""
        logits = logits.float()
        return logits.sigmoid() if self.multi_label else logits.softmax(dim=-1)

    def decisions(self, probabilities: torch.Tensor) -> torch.Tensor:
        """(B, labels) bool: the label passes its threshold (multi-label); the argmax (softmax)."""
        if self.multi_label:
            assert self.thresholds is not None
            return probabilities >= torch.tensor(self.thresholds, device=probabilities.device)
        picked = torch.zeros_like(probabilities, dtype=torch.bool)
        return picked.scatter_(-1, probabilities.argmax(-1, keepdim=True), True)

    def answer(
        self, probabilities: torch.Tensor, top_k: int | None = None
    ) -> list[list[Prediction]]:
        """Per image, the predictions a user reads, best first (see the module docstring).

        ``top_k`` None: ``DEFAULT_TOP_K`` labels for a softmax head (the pipeline's default), every label for a
        sigmoid head.
        """
        if not self.multi_label:
            chosen = DEFAULT_TOP_K if top_k is None else top_k
            return top_k_predictions(probabilities, self.labels, chosen)
        positive = self.decisions(probabilities).tolist()
        assert self.thresholds is not None
        answers = []
        for scores, passed in zip(probabilities.tolist(), positive, strict=True):
            order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
            keep = len(order) if top_k is None else max(1, top_k)
            answers.append(
                [
                    {
                        "label": self.labels[i],
                        "score": scores[i],
                        "threshold": self.thresholds[i],
                        "positive": bool(passed[i]),
                    }
                    for rank, i in enumerate(order)
                    if rank < keep or passed[i]
                ]
            )
        return answers

    def describe(self) -> dict[str, Any]:
        """The head as the model card shows it (serve's /v1/model, vitkit info)."""
        card: dict[str, Any] = {"problem_type": self.problem_type, "activation": self.kind}
        if self.thresholds is not None:
            card["thresholds"] = dict(zip(self.labels, self.thresholds, strict=True))
        return card


def _merge_thresholds(
    saved: float | Sequence[float], chosen: Thresholds, labels: Sequence[str]
) -> float | Sequence[float]:
    """``chosen`` on top of ``saved``: label=value pairs replace only the labels they name."""
    if not isinstance(chosen, Mapping):
        return chosen
    unknown = sorted(set(chosen) - set(labels))
    if unknown:
        raise HeadError(
            f"--threshold names {unknown}, which are not labels of this model "
            f"(its labels: {list(labels)[:20]})"
        )
    vector = as_threshold_vector(saved, len(labels))
    assert vector is not None
    return [chosen.get(label, value) for label, value in zip(labels, vector, strict=True)]


def head_for(
    config: Any,
    labels: Sequence[str],
    *,
    problem_type: str | None = None,
    threshold: Thresholds | None = None,
) -> Head:
    """The ``Head`` of a model config; ``threshold`` overrides the saved thresholds."""
    kind = head_kind(config, problem_type)
    if kind == "softmax":
        if threshold is not None:
            raise HeadError(
                "a threshold applies to multi-label (sigmoid) heads; this head is single-label "
                "(softmax over exclusive classes): leave --threshold out, or pass "
                "--problem-type multi_label if the head was trained with a sigmoid (BCE) loss"
            )
        return Head(tuple(labels), "softmax")
    saved = getattr(config, "thresholds", None)
    saved = DEFAULT_THRESHOLD if saved is None else saved
    chosen = saved if threshold is None else _merge_thresholds(saved, threshold, labels)
    vector = as_threshold_vector(chosen, len(labels))
    assert vector is not None
    return Head(tuple(labels), "sigmoid", tuple(vector))


def trim_answer(answer: list[Prediction], top_k: int) -> list[Prediction]:
    """The first ``top_k`` of an answer, and every later label that passes its threshold."""
    return [p for rank, p in enumerate(answer) if rank < top_k or p.get("positive")]


def top_k_predictions(
    probabilities: torch.Tensor, labels: Sequence[str], top_k: int
) -> list[list[Prediction]]:
    """(B, labels) probabilities -> per image the top-k ``{"label", "score"}``, best first."""
    k = max(1, min(top_k, probabilities.shape[-1]))
    scores, indices = probabilities.float().topk(k, dim=-1)
    return [
        [{"label": labels[i], "score": float(s)} for s, i in zip(row_s, row_i, strict=True)]
        for row_s, row_i in zip(scores.tolist(), indices.tolist(), strict=True)
    ]
