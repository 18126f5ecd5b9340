"""DeiT-style distillation: the losses, the frozen teacher, collapse detection, ``distill()``.

Losses (``alpha`` weighs the teacher's term; DeiT uses 0.5):

    hard:  (1 - alpha) * CE(cls_logits, y) + alpha * CE(dist_logits, argmax teacher_logits)
    soft:  (1 - alpha) * CE(cls_logits, y) + alpha * T^2 * KL(softmax(teacher/T) || softmax(dist/T))

The KL term is summed over classes and averaged over the batch (``batchmean``); T^2 keeps its
gradient scale independent of T (Hinton et al., 2015). DeiT's reference code divides the summed
KL by batch x classes instead, i.e. it is ours divided by the number of classes.

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

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vitkit.checkpoints import load_model
from vitkit.checkpoints.hf_deit import save_student
from vitkit.errors import VitkitError
from vitkit.models.deit import DistilledViT, DistilledViTOutput, build_student
from vitkit.models.vit import ViT

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


def _logits_of(output: Any) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output


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
            return _logits_of(self.teacher(images.to(device))).float().to(images.device)

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
    true_positive = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1).astype(np.float64)
    precision = np.divide(
        true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0
    )
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0
    )
    # Only classes present on the split can be "never predicted" meaningfully.
    missing = [i for i in range(len(labels)) if predicted[i] == 0 and support[i] > 0]
    return CollapseReport(
        [labels[i] for i in missing if support[i] >= min_support],
        float(f1.mean()) if len(f1) else 0.0,
        [labels[i] for i in missing if support[i] < min_support],
    )


def check_teacher_labels(teacher_labels: list[str], student_labels: list[str]) -> None:
    if list(teacher_labels) != list(student_labels):
        raise VitkitError(
            f"teacher classes {teacher_labels} differ from the data's classes {student_labels}: "
            "train the teacher on the same folder (same class names, same order)"
        )


TeacherFactory = Callable[[], nn.Module]


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
        return _logits_of(self.teacher(self.renormalize(images)))


def collapse_filter(labels: list[str]) -> Callable[[dict[str, Any]], str | None]:
    """The trainer's ``best_filter``: veto (and say loudly) any collapsed validation epoch.

    A never-predicted class with too few validation images to judge is mentioned once per run
    (the first epoch it happens), not vetoed.
    """
    import sys

    mentioned: set[str] = set()

    def veto(report: dict[str, Any]) -> str | None:
        result = collapse_report(report["confusion_matrix"], labels)
        rare = set(result.rarely_seen) - mentioned
        if rare:
            mentioned.update(rare)
            print(f"note: {result.rare_message('validation')}", file=sys.stderr)
        if not result.collapsed:
            return None
        message = result.message("validation")
        print(f"WARNING: {message}; this epoch is not kept as the best model", file=sys.stderr)
        return message

    return veto


def student_spec_factory(
    student: str, overrides: dict[str, Any] | None = None
) -> Callable[[Any, dict[int, str]], Any]:
    """A ``model_factory`` for ``vitkit.training.trainer.train``: a DeiT student from a preset (from scratch),
    a ViT checkpoint (weights copied, distillation token from [CLS]) or a student directory."""
    from vitkit.images.processor import ImageProcessor
    from vitkit.models.config import preset
    from vitkit.training.trainer import ModelSpec

    def factory(cfg: Any, id2label: dict[int, str]) -> ModelSpec:
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
                raise VitkitError(
                    f"{student} is a {loaded.model_type} model: a DeiT student starts from a "
                    "ViT or a DeiT student checkpoint, or from a preset name"
                )
            model.reset_head(id2label)
            processor_config = loaded.preprocessing()
        else:
            extra = dict(overrides or {})
            if cfg.image_size is not None:
                extra["image_size"] = cfg.image_size
            model = build_student(preset(student, **extra), id2label)
            description = f"DeiT student {student} from scratch"
        if processor_config is None:
            processor_config = ImageProcessor.for_config(model.config).to_dict()
        processor = ImageProcessor.from_dict(processor_config)
        saved_processor = processor_config

        def save(trained: nn.Module, directory: Path) -> None:
            assert isinstance(trained, DistilledViT)
            save_student(trained, directory, saved_processor)

        return ModelSpec(
            model=model,
            image_size=model.config.image_hw,
            mean=tuple(processor_config.get("image_mean", (0.5, 0.5, 0.5))),
            std=tuple(processor_config.get("image_std", (0.5, 0.5, 0.5))),
            eval_transform=lambda image: processor(image)[0],
            save=save,
            load=lambda directory: load_model(directory).model,
            description=description,
        )

    return factory


class _TeacherHook:
    """Builds the loss once the student's normalisation is known (inside the model factory)."""

    def __init__(
        self,
        teacher: Teacher,
        kind: DistillKind,
        alpha: float,
        temperature: float,
        smoothing: float,
    ) -> None:
        self.teacher, self.kind, self.alpha = teacher, kind, alpha
        self.temperature, self.smoothing = temperature, smoothing
        self.loss: DistillationLoss | None = None

    def wrap(
        self, factory: Callable[[Any, dict[int, str]], Any]
    ) -> Callable[[Any, dict[int, str]], Any]:
        def wrapped(cfg: Any, id2label: dict[int, str]) -> Any:
            spec = factory(cfg, id2label)
            check_teacher_labels(self.teacher.labels, [id2label[i] for i in range(len(id2label))])
            device = "cuda" if (cfg.device or "").startswith("cuda") else "cpu"
            if cfg.device is None and torch.cuda.is_available():
                device = "cuda"
            module = NormalizedTeacher(self.teacher, spec.mean, spec.std).to(device)
            self.loss = DistillationLoss(
                module, self.kind, self.alpha, self.temperature, self.smoothing
            )
            return spec

        return wrapped

    def __call__(self, outputs: Any, targets: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        assert self.loss is not None, "the model factory runs before the first step"
        return self.loss(outputs, targets, images)


def distill(
    cfg: Any,
    teacher: str | Path | Teacher,
    student: str,
    *,
    kind: DistillKind = "hard",
    alpha: float = 0.5,
    temperature: float = 1.0,
    overrides: dict[str, Any] | None = None,
    raise_on_collapse: bool = True,
) -> Any:
    """Train a DeiT student on ``cfg.data`` with ``teacher``; returns the trainer's ``TrainResult``.

    Collapsed epochs (a class never predicted on validation, or macro-F1 0) are never kept as the
    best model; a run where every epoch collapsed ends with no ``best/`` and a clear error.
    """
    from vitkit.training.trainer import train

    teacher_obj = teacher if isinstance(teacher, Teacher) else load_teacher(teacher)
    hook = _TeacherHook(teacher_obj, kind, alpha, temperature, cfg.label_smoothing)
    factory = hook.wrap(student_spec_factory(student, overrides))
    labels_holder: dict[str, list[str]] = {}

    def best_filter(report: dict[str, Any]) -> str | None:
        labels = labels_holder.setdefault("labels", list(report["labels"]))
        return collapse_filter(labels)(report)

    result = train(cfg, model_factory=factory, loss_fn=hook, best_filter=best_filter)
    if result.best_epoch is None and raise_on_collapse:
        raise VitkitError(
            f"distillation into {cfg.out} collapsed in every epoch (see metrics.jsonl: "
            "not_best_because); no model was kept. Try --kind soft, a lower --alpha, a lower "
            "--lr, or more epochs"
        )
    return result
