"""DeiT-style distillation losses, single-label (softmax) and multi-label (one sigmoid per label).

Losses (``alpha`` weighs the teacher's term; DeiT uses 0.5):

    hard:  (1 - alpha) * CE(cls_logits, y) + alpha * CE(dist_logits, argmax teacher_logits)
    soft:  (1 - alpha) * CE(cls_logits, y) + alpha * T^2 * KL(softmax(teacher/T) || softmax(dist/T))

The KL term is summed over classes and averaged over the batch (``batchmean``); T^2 keeps its
gradient scale independent of T (Hinton et al., 2015). DeiT's reference code divides the summed
KL by batch x classes instead, i.e. it is ours divided by the number of classes.

Multi-label data (a label table, ``vitkit.training.tasks.multilabel``): every label is its own
yes/no question, so each softmax becomes one sigmoid per label and each cross-entropy a BCE
(averaged over labels and images, as the multi-label task's own loss):

    hard:  (1 - alpha) * BCE(cls_logits, y) + alpha * BCE(dist_logits, teacher's decisions)
    soft:  (1 - alpha) * BCE(cls_logits, y) + alpha * T^2 * BCE(dist/T, sigmoid(teacher/T))

The teacher decides at its own saved thresholds (0.5 where it has none). The soft term is each
label's Bernoulli KL(teacher_T || student_T) plus the teacher's entropy, a constant: the same
gradients. The teacher must be a multi-label model itself (a sigmoid head: a softmax teacher's
scores compete across labels, so they are no per-label probabilities).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

DistillKind = Literal["hard", "soft", "none"]


def hard_distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of the student against the teacher's arg-max class."""
    return F.cross_entropy(student_logits, teacher_logits.argmax(dim=-1))


def soft_distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * KL(teacher_T || student_T), summed over classes, averaged over the batch."""
    student_log_probs = F.log_softmax(student_logits / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits / temperature, dim=-1)
    divergence = F.kl_div(
        student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True
    )
    return divergence * temperature**2


def distillation_loss(
    cls_logits: torch.Tensor,
    dist_logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: DistillKind = "hard",
    alpha: float = 0.5,
    temperature: float = 1.0,
    label_smoothing: float = 0.0,
    class_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """DeiT's objective: (1 - alpha) * CE on the labels + alpha * the teacher term;
    ``class_weight`` weighs the labels' classes (``--balance weighted-loss``)."""
    base = F.cross_entropy(
        cls_logits, targets, weight=class_weight, label_smoothing=label_smoothing
    )
    if kind == "none":
        # No teacher: both heads learn the labels (a fair "same student, no teacher" control).
        dist = F.cross_entropy(
            dist_logits, targets, weight=class_weight, label_smoothing=label_smoothing
        )
        return (base + dist) / 2
    if kind == "hard":
        teacher_term = hard_distillation_loss(dist_logits, teacher_logits)
    elif kind == "soft":
        teacher_term = soft_distillation_loss(dist_logits, teacher_logits, temperature)
    else:
        raise ValueError(f"unknown distillation kind {kind!r}: use hard, soft or none")
    return (1 - alpha) * base + alpha * teacher_term


def multilabel_distillation_loss(
    cls_logits: torch.Tensor,
    dist_logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: DistillKind = "soft",
    alpha: float = 0.5,
    temperature: float = 1.0,
    teacher_thresholds: torch.Tensor | None = None,
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """DeiT's objective with one sigmoid per label (see the module docstring); ``targets`` are
    (possibly mixed or smoothed) multi-hot rows, ``pos_weight`` weighs the labels' positives."""
    base = F.binary_cross_entropy_with_logits(cls_logits, targets, pos_weight=pos_weight)
    if kind == "none":
        dist = F.binary_cross_entropy_with_logits(dist_logits, targets, pos_weight=pos_weight)
        return (base + dist) / 2
    if kind == "hard":
        probabilities = teacher_logits.sigmoid()
        cut = teacher_thresholds if teacher_thresholds is not None else 0.5
        decisions = (probabilities >= cut).float()
        teacher_term = F.binary_cross_entropy_with_logits(dist_logits, decisions)
    elif kind == "soft":
        soft_targets = (teacher_logits / temperature).sigmoid()
        teacher_term = F.binary_cross_entropy_with_logits(dist_logits / temperature, soft_targets)
        teacher_term = teacher_term * temperature**2
    else:
        raise ValueError(f"unknown distillation kind {kind!r}: use hard, soft or none")
    return (1 - alpha) * base + alpha * teacher_term
