"""DeiT-style distillation: the losses, the frozen teacher, collapse detection, ``distill()``.

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

With ``--mix cutmix`` (or ``mixup``) the trainer blends the images of each batch before the
student's forward pass, ``y`` becomes the same blend of the two labels, and the teacher is run on
the blended images themselves: teacher and student see the very same input ("function matching",
Beyer et al., 2022, "Knowledge distillation: A good teacher is patient and consistent"). The
blends are inputs no labelled image covers, on which the student can still learn the teacher's
answer; with a class of only a dozen training images that is what lifts the student towards the
teacher (see ``vitkit.experiments.compare``, whose distilled row uses it).

A distilled run can collapse (the student predicts one class, macro-F1 near 0) without the loss
saying so. ``collapse_report`` detects it from a confusion matrix; the trainer never keeps a
collapsed epoch as the best model and the CLI says so loudly. The student network is
``vitkit.models.deit``; its files, ``vitkit.checkpoints.hf_deit``.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vitkit.checkpoints import load_model
from vitkit.checkpoints.hf_deit import save_student
from vitkit.errors import TrainingError
from vitkit.images.processor import ImageProcessor
from vitkit.models.deit import DistilledViT, DistilledViTOutput, build_student
from vitkit.models.protocol import logits_of
from vitkit.models.vit import ViT
from vitkit.training import data as vdata
from vitkit.training.callbacks import Callback
from vitkit.training.checks import check_image_folder, check_vit_settings
from vitkit.training.config import TrainConfig
from vitkit.training.evaluate import EvalResult, ProcessorTransform
from vitkit.training.labels import is_label_table
from vitkit.training.metrics import per_class_scores
from vitkit.training.run import Run
from vitkit.training.specs import ModelFactory, preset_config
from vitkit.training.state import FitState
from vitkit.training.tasks.base import ModelSpec, TaskBuilder
from vitkit.training.tasks.classify import ClassificationTask
from vitkit.training.tasks.multilabel import (
    MULTI_LABEL,
    MultiLabelBuilder,
    MultiLabelTask,
    saved_thresholds,
)
from vitkit.training.trainer import TrainResult, train

DistillKind = Literal["hard", "soft", "none"]


# ---- losses -----------------------------------------------------------------------------
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
) -> torch.Tensor:
    """DeiT's objective: (1 - alpha) * CE on the labels + alpha * the teacher term."""
    base = F.cross_entropy(cls_logits, targets, label_smoothing=label_smoothing)
    if kind == "none":
        # No teacher: both heads learn the labels (a fair "same student, no teacher" control).
        return (base + F.cross_entropy(dist_logits, targets, label_smoothing=label_smoothing)) / 2
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


@dataclass
class DistillationLoss:
    """``loss_fn(outputs, targets, images)`` for the trainer: runs the frozen teacher on the
    same batch and combines the student's two heads with it."""

    teacher: nn.Module
    kind: DistillKind = "hard"
    alpha: float = 0.5
    temperature: float = 1.0
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        self.teacher.eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)

    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        self.teacher.eval()  # the trainer may call .train() on everything it sees; stay frozen
        device = next(self.teacher.parameters()).device
        with torch.no_grad():
            return logits_of(self.teacher(images.to(device))).float().to(images.device)

    def __call__(self, outputs: Any, targets: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(outputs, DistilledViTOutput) or outputs.cls_logits is None:
            raise TypeError("DistillationLoss needs a DistilledViT student's output (two heads)")
        assert outputs.dist_logits is not None
        teacher = self.teacher_logits(images) if self.kind != "none" else outputs.dist_logits
        return distillation_loss(
            outputs.cls_logits,
            outputs.dist_logits,
            targets,
            teacher,
            self.kind,
            self.alpha,
            self.temperature,
            self.label_smoothing,
        )


# ---- collapse detection -----------------------------------------------------------------
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


def check_teacher_labels(teacher_labels: list[str], student_labels: list[str]) -> None:
    if list(teacher_labels) != list(student_labels):
        raise TrainingError(
            f"teacher classes {teacher_labels} differ from the data's classes {student_labels}: "
            "train the teacher on the same folder (same class names, same order)"
        )


# ---- training with the vitkit trainer ---------------------------------------------------
@dataclass
class Teacher:
    """A frozen classifier and the normalisation it expects."""

    model: nn.Module
    labels: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str


def load_teacher(source: str | Path, device: str = "cpu") -> Teacher:
    """Any model vitkit loads (``vitkit.checkpoints.load_model``: a ResNet baseline, a ViT, a
    DeiT student, ...) with the normalisation its preprocessing uses."""
    loaded = load_model(source, device=device)
    preprocessing = loaded.preprocessing()
    return Teacher(
        loaded.model,
        loaded.model.config.labels(),
        tuple(preprocessing.get("image_mean", (0.5, 0.5, 0.5))),
        tuple(preprocessing.get("image_std", (0.5, 0.5, 0.5))),
        str(source),
    )


class Renormalize(nn.Module):
    """Student-normalised pixels -> teacher-normalised pixels (the two may use other mean/std)."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(
        self,
        student_mean: tuple[float, ...],
        student_std: tuple[float, ...],
        teacher_mean: tuple[float, ...],
        teacher_std: tuple[float, ...],
    ) -> None:
        super().__init__()

        def column(values: tuple[float, ...]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)

        self.register_buffer("scale", column(student_std) / column(teacher_std))
        self.register_buffer(
            "shift", (column(student_mean) - column(teacher_mean)) / column(teacher_std)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images * self.scale + self.shift


class NormalizedTeacher(nn.Module):
    """Renormalise, then run the teacher: what ``DistillationLoss`` calls on each batch."""

    def __init__(
        self, teacher: Teacher, student_mean: tuple[float, ...], student_std: tuple[float, ...]
    ) -> None:
        super().__init__()
        self.renormalize = Renormalize(student_mean, student_std, teacher.mean, teacher.std)
        self.teacher = teacher.model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return logits_of(self.teacher(self.renormalize(images)))


# ---- the task -----------------------------------------------------------------------------
class DistillationTask(ClassificationTask):
    """A DeiT student and its frozen teacher: ``{"loss", "logits"}`` where the loss is DeiT's
    objective on the (mixed) batch, the teacher run on the very images the student sees."""

    def __init__(
        self,
        spec: ModelSpec,
        labels: list[str],
        teacher: nn.Module,
        *,
        kind: DistillKind = "hard",
        alpha: float = 0.5,
        temperature: float = 1.0,
        label_smoothing: float = 0.0,
        mix: str = "none",
        mix_alpha: float = 1.0,
    ) -> None:
        super().__init__(
            spec, labels, label_smoothing=label_smoothing, mix=mix, mix_alpha=mix_alpha
        )
        self.criterion = DistillationLoss(teacher, kind, alpha, temperature, label_smoothing)

    def loss(self, outputs: Any, targets: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return self.criterion(outputs, targets, images)

    def to(self, device: torch.device) -> DistillationTask:
        super().to(device)
        self.criterion.teacher.to(device)
        return self


class DistillationBuilder(TaskBuilder):
    """Class folders -> a ``DistillationTask`` for ``student`` taught by ``teacher``."""

    def __init__(
        self,
        teacher: Teacher,
        student: str,
        *,
        kind: DistillKind = "hard",
        alpha: float = 0.5,
        temperature: float = 1.0,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        check_distillation_weights(alpha, temperature)
        self.teacher, self.kind, self.alpha, self.temperature = teacher, kind, alpha, temperature
        self.student_factory = student_spec_factory(student, overrides)

    def check(self, cfg: TrainConfig) -> None:
        check_image_folder(cfg)
        check_vit_settings(cfg)  # the student (distill() puts it in cfg)

    def build(self, cfg: TrainConfig, splits: vdata.DataSplits) -> DistillationTask:
        check_teacher_labels(self.teacher.labels, splits.classes)
        assert cfg.label_smoothing is not None and cfg.mix is not None, "resolve_recipe(cfg) first"
        spec = self.student_factory(cfg, splits.id2label)
        return DistillationTask(
            spec,
            splits.classes,
            NormalizedTeacher(self.teacher, spec.mean, spec.std),
            kind=self.kind,
            alpha=self.alpha,
            temperature=self.temperature,
            label_smoothing=cfg.label_smoothing,
            mix=cfg.mix,
            mix_alpha=cfg.mix_alpha,
        )


def check_distillation_weights(alpha: float, temperature: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise TrainingError(f"--alpha {alpha}: the teacher's weight must be in [0, 1]")
    if temperature <= 0:
        raise TrainingError(f"--temperature {temperature}: use a temperature > 0")


# ---- the multi-label task ------------------------------------------------------------------
class MultiLabelDistillationTask(MultiLabelTask):
    """A DeiT student with one sigmoid per label and its frozen multi-label teacher, run on the
    very (mixed) images the student sees; ``{"loss", "logits"}`` (module docstring's BCE terms)."""

    def __init__(
        self,
        spec: ModelSpec,
        labels: list[str],
        teacher: nn.Module,
        teacher_thresholds: np.ndarray,
        *,
        kind: DistillKind = "soft",
        alpha: float = 0.5,
        temperature: float = 1.0,
        label_smoothing: float = 0.0,
        mix: str = "none",
        mix_alpha: float = 1.0,
    ) -> None:
        super().__init__(
            spec, labels, mix=mix, mix_alpha=mix_alpha, label_smoothing=label_smoothing
        )
        self.teacher = DistillationLoss(teacher, kind, alpha, temperature)  # frozen, in eval mode
        self.teacher_thresholds = torch.as_tensor(teacher_thresholds, dtype=torch.float32)

    def loss(self, outputs: Any, targets: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(outputs, DistilledViTOutput) or outputs.cls_logits is None:
            raise TypeError("distillation needs a DistilledViT student's output (two heads)")
        assert outputs.dist_logits is not None
        criterion = self.teacher
        teacher = criterion.teacher_logits(images) if criterion.kind != "none" else targets
        weight = self.pos_weight.to(images.device) if self.pos_weight is not None else None
        return multilabel_distillation_loss(
            outputs.cls_logits.float(),
            outputs.dist_logits.float(),
            targets,
            teacher,
            criterion.kind,
            criterion.alpha,
            criterion.temperature,
            self.teacher_thresholds.to(images.device),
            weight,
        )

    def to(self, device: torch.device) -> MultiLabelDistillationTask:
        super().to(device)
        self.teacher.teacher.to(device)
        return self


class MultiLabelDistillationBuilder(MultiLabelBuilder):
    """A label table -> a ``MultiLabelDistillationTask`` for ``student`` taught by ``teacher``
    (a multi-label model trained on the same labels)."""

    def __init__(
        self,
        teacher: Teacher,
        student: str,
        *,
        kind: DistillKind = "soft",
        alpha: float = 0.5,
        temperature: float = 1.0,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        check_distillation_weights(alpha, temperature)
        super().__init__(student_spec_factory(student, overrides))
        self.teacher, self.kind, self.alpha, self.temperature = teacher, kind, alpha, temperature

    def check(self, cfg: TrainConfig) -> None:
        super().check(cfg)
        check_vit_settings(cfg)  # the student (distill() puts it in cfg)
        config = self.teacher.model.config
        if getattr(config, "problem_type", None) != MULTI_LABEL:
            raise TrainingError(
                f"teacher {self.teacher.source} has a softmax head (its config.json has no "
                f"problem_type {MULTI_LABEL}): a multi-label student needs a multi-label "
                "teacher, trained on the same label table (vitkit train --data TABLE)"
            )

    def build(self, cfg: TrainConfig, splits: vdata.DataSplits) -> MultiLabelDistillationTask:
        check_teacher_labels(self.teacher.labels, splits.classes)
        assert cfg.label_smoothing is not None and cfg.mix is not None, "resolve_recipe(cfg) first"
        spec = self.model_factory(cfg, splits.id2label)
        thresholds = saved_thresholds(self.teacher.model, len(splits.classes))
        return MultiLabelDistillationTask(
            spec,
            splits.classes,
            NormalizedTeacher(self.teacher, spec.mean, spec.std),
            thresholds if thresholds is not None else np.full(len(splits.classes), 0.5),
            kind=self.kind,
            alpha=self.alpha,
            temperature=self.temperature,
            label_smoothing=cfg.label_smoothing,
            mix=cfg.mix,
            mix_alpha=cfg.mix_alpha,
        )


class CollapseVeto(Callback):
    """Never keep a collapsed epoch as the best model, and say so loudly (see collapse_filter)."""

    def __init__(self) -> None:
        self.veto: Callable[[dict[str, Any]], str | None] | None = None

    def on_validation(
        self, run: Run, fit: FitState, record: dict[str, Any], val: EvalResult
    ) -> None:
        if self.veto is None:
            self.veto = collapse_filter(list(val.report["labels"]), speak=run.info.is_main)
        reason = self.veto(val.report)
        if reason is not None:
            record["not_best_because"] = reason


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


def student_spec_factory(student: str, overrides: dict[str, Any] | None = None) -> ModelFactory:
    """A DeiT student from a preset (from scratch), a ViT checkpoint (weights copied, the
    distillation token from [CLS]) or a student directory, with new heads for the data."""

    def factory(cfg: TrainConfig, id2label: dict[int, str]) -> ModelSpec:
        processor_config: dict[str, Any] | None = None
        if Path(student).exists():
            loaded = load_model(student, image_size=cfg.image_size)
            if isinstance(loaded.model, DistilledViT):
                model = loaded.model
                description = f"DeiT student from {student}"
            elif isinstance(loaded.model, ViT):
                model = DistilledViT.from_vit(loaded.model)
                description = f"DeiT student initialised from {student}"
            else:
                raise TrainingError(
                    f"{student} is a {loaded.model_type} model: a DeiT student starts from a "
                    "ViT or a DeiT student checkpoint, or from a preset name"
                )
            model.reset_head(id2label)
            processor_config = loaded.preprocessing()
        else:
            config = preset_config(student, dict(overrides or {}), cfg.image_size)
            model = build_student(config, id2label)
            description = f"DeiT student {student} from scratch"
        if processor_config is None:
            processor_config = ImageProcessor.for_config(model.config).to_dict()
        saved_processor = processor_config

        def save(trained: nn.Module, directory: Path) -> None:
            assert isinstance(trained, DistilledViT)
            save_student(trained, directory, saved_processor)

        return ModelSpec(
            model=model,
            image_size=model.config.image_hw,
            mean=tuple(processor_config.get("image_mean", (0.5, 0.5, 0.5))),
            std=tuple(processor_config.get("image_std", (0.5, 0.5, 0.5))),
            eval_transform=ProcessorTransform(ImageProcessor.from_dict(processor_config)),
            save=save,
            load=lambda directory: load_model(directory).model,
            description=description,
            patch_size=model.config.patch_size,
        )

    return factory


def student_settings(cfg: TrainConfig, student: str, overrides: dict[str, Any]) -> TrainConfig:
    """``cfg`` saying what the student is: a preset from scratch (with its overrides; the
    from-scratch recipe) or a checkpoint to start from (the fine-tuning recipe), so the
    settings checks and the plan see the real student."""
    if Path(student).exists():
        return dataclasses.replace(cfg, model=student, from_scratch=False, model_overrides={})
    return dataclasses.replace(
        cfg, model=None, from_scratch=True, preset=student, model_overrides=dict(overrides)
    )


def distill(
    cfg: TrainConfig,
    teacher: str | Path | Teacher,
    student: str,
    *,
    kind: DistillKind = "hard",
    alpha: float = 0.5,
    temperature: float = 1.0,
    overrides: dict[str, Any] | None = None,
    raise_on_collapse: bool = True,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train a DeiT student on ``cfg.data`` with ``teacher``; returns the trainer's ``TrainResult``.

    Collapsed epochs (a class never predicted on validation, or macro-F1 0) are never kept as the
    best model; a run where every epoch collapsed ends with no ``best/`` and a clear error.
    """
    teacher_obj = teacher if isinstance(teacher, Teacher) else load_teacher(teacher)
    cfg = student_settings(cfg, student, overrides or {})
    multi_label = is_label_table(cfg.data)
    builder_class = MultiLabelDistillationBuilder if multi_label else DistillationBuilder
    builder = builder_class(
        teacher_obj, student, kind=kind, alpha=alpha, temperature=temperature, overrides=overrides
    )
    # Collapse (a class never predicted) is a softmax failure read off a confusion matrix; a
    # multi-label run has neither, and its thresholds are tuned on validation every epoch.
    vetoes = [] if multi_label else [CollapseVeto()]
    result = train(cfg, builder, callbacks=[*callbacks, *vetoes])
    if result.best_epoch is None and raise_on_collapse:
        raise TrainingError(
            f"distillation into {cfg.out} collapsed in every epoch (see metrics.jsonl: "
            "not_best_because); no model was kept. Try --kind soft, a lower --alpha, a lower "
            "--lr, or more epochs"
        )
    return result
