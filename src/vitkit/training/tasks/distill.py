"""DeiT-style distillation as a training task: a DeiT student taught by a frozen teacher.

    train(cfg, DistillationBuilder(teacher, student, kind="soft"))

One task serves both kinds of data: class folders (softmax, cross-entropy) and label tables
(one sigmoid per label, BCE). The student learns its labels exactly as the task it would train
on alone (``ClassificationTask`` or ``MultiLabelTask``: the same mixing, smoothing, balance,
evaluator and saved files) plus the teacher's term on its distillation head (the losses:
``distill_losses``; the student network: ``distill_student``; collapse: ``distill_collapse``).

With ``--mix cutmix`` (or ``mixup``) each batch is blended before the student's forward pass,
``y`` becomes the same blend of the two labels, and the teacher is run on the blended images
themselves: teacher and student see the very same input ("function matching", Beyer et al.,
2022, "Knowledge distillation: A good teacher is patient and consistent"). The blends are
inputs no labelled image covers, on which the student can still learn the teacher's answer;
with a class of only a dozen training images that is what lifts the student towards the
teacher (see ``vitkit.experiments.compare``, whose distilled row uses it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vitkit.checkpoints import load_model
from vitkit.errors import TrainingError
from vitkit.models.deit import DistilledViTOutput
from vitkit.models.protocol import logits_of
from vitkit.training import data as vdata
from vitkit.training.callbacks import Callback
from vitkit.training.checks import check_vit_settings
from vitkit.training.config import TrainConfig
from vitkit.training.distributed import DistInfo
from vitkit.training.stored_data import is_multi_label_data
from vitkit.training.task import Frozen, TrainingTask
from vitkit.training.task_builder import TaskBuilder
from vitkit.training.tasks.classify import ClassificationBuilder, ClassificationTask
from vitkit.training.tasks.distill_collapse import CollapseVeto
from vitkit.training.tasks.distill_losses import (
    DistillKind,
    distillation_loss,
    multilabel_distillation_loss,
)
from vitkit.training.tasks.distill_student import student_settings, student_spec_factory
from vitkit.training.tasks.multilabel import (
    MULTI_LABEL,
    MultiLabelBuilder,
    MultiLabelTask,
    saved_thresholds,
)

StudentTask = ClassificationTask | MultiLabelTask


# ---- the teacher --------------------------------------------------------------------------
@dataclass
class Teacher:
    """A trained classifier, the normalisation it expects and where it came from."""

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


class TeacherLogits(nn.Module):
    """The teacher on the student's pixels: renormalised, run, its logits in float32."""

    def __init__(
        self, teacher: Teacher, student_mean: tuple[float, ...], student_std: tuple[float, ...]
    ) -> None:
        super().__init__()
        self.renormalize = Renormalize(student_mean, student_std, teacher.mean, teacher.std)
        self.model = teacher.model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model(self.renormalize(images))).float()


# ---- the task -----------------------------------------------------------------------------
class DistillationTask(TrainingTask):
    """A DeiT student (``student``: the single- or multi-label task it would train on alone) and
    its teacher (``teacher(images) -> logits``, frozen here: no gradients, always in eval mode);
    returns ``{"loss", "logits"}``, the loss being DeiT's objective on the (mixed) batch with the
    teacher run on the very images the student sees."""

    teacher_thresholds: torch.Tensor

    def __init__(
        self,
        student: StudentTask,
        teacher: nn.Module,
        *,
        kind: DistillKind = "hard",
        alpha: float = 0.5,
        temperature: float = 1.0,
        teacher_thresholds: np.ndarray | None = None,
    ) -> None:
        super().__init__(student.spec)
        check_distillation_weights(alpha, temperature)
        self.student = student
        self.teacher = Frozen(teacher)
        self.kind, self.alpha, self.temperature = kind, alpha, temperature
        self.evaluator = student.evaluator
        # a multi-label teacher's decisions (hard distillation): its own thresholds, else 0.5
        cuts = (
            np.full(len(student.labels), 0.5) if teacher_thresholds is None else teacher_thresholds
        )
        self.register_buffer(
            "teacher_thresholds", torch.as_tensor(cuts, dtype=torch.float32), persistent=False
        )

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        images, targets = self.student.blend(images, targets)
        outputs = self.network(images)
        if not isinstance(outputs, DistilledViTOutput) or outputs.cls_logits is None:
            raise TypeError("distillation needs a DistilledViT student's output (two heads)")
        assert outputs.dist_logits is not None
        cls_logits, dist_logits = outputs.cls_logits.float(), outputs.dist_logits.float()
        # kind "none" runs no teacher: both heads learn the labels (the loss ignores it)
        teacher = self.teacher(images) if self.kind != "none" else dist_logits
        loss = self.loss(cls_logits, dist_logits, targets, teacher)
        return {"loss": loss, "logits": logits_of(outputs)}

    def loss(
        self,
        cls_logits: torch.Tensor,
        dist_logits: torch.Tensor,
        targets: torch.Tensor,
        teacher_logits: torch.Tensor,
    ) -> torch.Tensor:
        """DeiT's objective, softmax or one sigmoid per label as the student's task is."""
        student = self.student
        if isinstance(student, MultiLabelTask):
            return multilabel_distillation_loss(
                cls_logits, dist_logits, targets, teacher_logits, self.kind, self.alpha,
                self.temperature, self.teacher_thresholds, student.pos_weight,
            )  # fmt: skip
        return distillation_loss(
            cls_logits, dist_logits, targets, teacher_logits, self.kind, self.alpha,
            self.temperature, student.label_smoothing, student.class_weight,
        )  # fmt: skip

    def save(self, directory: Path) -> None:
        self.student.save(directory)  # a multi-label student saves its tuned thresholds too


def check_distillation_weights(alpha: float, temperature: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise TrainingError(f"--alpha {alpha}: the teacher's weight must be in [0, 1]")
    if temperature <= 0:
        raise TrainingError(f"--temperature {temperature}: use a temperature > 0")


def check_teacher_labels(teacher_labels: list[str], student_labels: list[str]) -> None:
    if list(teacher_labels) != list(student_labels):
        raise TrainingError(
            f"teacher classes {teacher_labels} differ from the data's classes {student_labels}: "
            "train the teacher on the same data (same class names, same order)"
        )


# ---- the builder --------------------------------------------------------------------------
class DistillationBuilder(TaskBuilder):
    """Class folders or a label table -> a ``DistillationTask`` for ``student`` (a preset, a
    ViT checkpoint or a student directory) taught by ``teacher`` (a path, a hub id or a
    ``Teacher``). The data's own builder (``ClassificationBuilder`` or ``MultiLabelBuilder``)
    reads it; a single-label run never keeps a collapsed epoch (``CollapseVeto``) and, with
    ``raise_on_collapse``, ends with an error when every epoch collapsed."""

    def __init__(
        self,
        teacher: str | Path | Teacher,
        student: str,
        *,
        kind: DistillKind = "hard",
        alpha: float = 0.5,
        temperature: float = 1.0,
        overrides: dict[str, Any] | None = None,
        raise_on_collapse: bool = True,
    ) -> None:
        check_distillation_weights(alpha, temperature)
        self.teacher = teacher if isinstance(teacher, Teacher) else load_teacher(teacher)
        self.student, self.overrides = student, dict(overrides or {})
        self.kind, self.alpha, self.temperature = kind, alpha, temperature
        self.raise_on_collapse = raise_on_collapse
        self.student_factory = student_spec_factory(student, self.overrides)

    def data_builder(self, cfg: TrainConfig) -> ClassificationBuilder | MultiLabelBuilder:
        """The builder the student would train with alone: label table or class folders."""
        if is_multi_label_data(cfg.data, (cfg.image_column, cfg.label_column)):
            return MultiLabelBuilder(self.student_factory)
        return ClassificationBuilder(self.student_factory)

    def resolve(self, cfg: TrainConfig) -> TrainConfig:
        return student_settings(cfg, self.student, self.overrides)

    def check(self, cfg: TrainConfig) -> None:
        builder = self.data_builder(cfg)
        builder.check(cfg)
        check_vit_settings(cfg)  # the student (resolve put it in cfg)
        problem = getattr(self.teacher.model.config, "problem_type", None)
        if isinstance(builder, MultiLabelBuilder) and problem != MULTI_LABEL:
            raise TrainingError(
                f"teacher {self.teacher.source} has a softmax head (its config.json has no "
                f"problem_type {MULTI_LABEL}): a multi-label student needs a multi-label "
                "teacher, trained on the same label table (vitkit train --data TABLE)"
            )

    def callbacks(self, cfg: TrainConfig) -> list[Callback]:
        # Collapse (a class never predicted) is a softmax failure read off a confusion matrix; a
        # multi-label run has neither, and its thresholds are tuned on validation every epoch.
        if is_multi_label_data(cfg.data, (cfg.image_column, cfg.label_column)):
            return []
        return [CollapseVeto(raise_when_all_collapsed=self.raise_on_collapse)]

    def read_splits(self, cfg: TrainConfig, out: Path | None) -> vdata.DataSplits:
        return self.data_builder(cfg).read_splits(cfg, out)

    def check_splits(self, cfg: TrainConfig, splits: vdata.DataSplits) -> None:
        self.data_builder(cfg).check_splits(cfg, splits)

    def describe_data(self, cfg: TrainConfig, data: vdata.RunData) -> str:
        return self.data_builder(cfg).describe_data(cfg, data)

    def build(self, cfg: TrainConfig, splits: vdata.DataSplits) -> DistillationTask:
        check_teacher_labels(self.teacher.labels, splits.classes)
        student = self.data_builder(cfg).build(cfg, splits)
        return DistillationTask(
            student,
            TeacherLogits(self.teacher, student.spec.mean, student.spec.std),
            kind=self.kind,
            alpha=self.alpha,
            temperature=self.temperature,
            teacher_thresholds=saved_thresholds(self.teacher.model, len(splits.classes)),
        )

    def prepare_data(
        self,
        cfg: TrainConfig,
        out: Path,
        task: TrainingTask,
        splits: vdata.DataSplits,
        info: DistInfo,
    ) -> vdata.RunData:
        assert isinstance(task, DistillationTask)
        # the student task gets its class weights / label weights, as when it trains alone
        return self.data_builder(cfg).prepare_data(cfg, out, task.student, splits, info)
