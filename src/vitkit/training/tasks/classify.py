"""Single-label classification, the default task: one class per image, from class folders.

The loss is cross-entropy on the logits, with ``--label-smoothing`` and, under
``--balance weighted-loss``, inverse-frequency class weights. With ``--mix`` each batch is mixed
first (``vitkit.training.augment.mix_batch``): the model and the loss see the mixed images and
the targets become the same blend of one-hot labels.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vitkit.models.protocol import logits_of
from vitkit.training import data as vdata
from vitkit.training.augment import mix_batch
from vitkit.training.checks import check_image_folder, check_vit_settings
from vitkit.training.config import TrainConfig
from vitkit.training.distributed import DistInfo
from vitkit.training.evaluate import ClassificationEvaluator
from vitkit.training.model_spec import ModelFactory, ModelSpec
from vitkit.training.specs import vit_model_spec
from vitkit.training.task import TrainingTask
from vitkit.training.task_builder import TaskBuilder

# The old hook: ``loss_fn(outputs, targets, images)`` (outputs: the model's forward).
LossFn = Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]


class ClassificationTask(TrainingTask):
    """Cross-entropy on the (mixed) batch; returns ``{"loss", "logits"}``.

    ``blend`` and ``label_loss`` are the two halves of ``forward`` that a task built on this one
    reuses (distillation: the same mixing and the same loss on the labels, plus a teacher's).
    """

    class_weight: torch.Tensor | None

    def __init__(
        self,
        spec: ModelSpec,
        labels: list[str],
        *,
        label_smoothing: float = 0.0,
        mix: str = "none",
        mix_alpha: float = 1.0,
        loss_fn: LossFn | None = None,
    ) -> None:
        super().__init__(spec)
        self.labels = list(labels)
        self.label_smoothing = label_smoothing
        self.mix, self.mix_alpha = mix, mix_alpha
        self.loss_fn = loss_fn
        # --balance weighted-loss: inverse-frequency class weights (set by prepare_data); a
        # buffer, so .to() moves it, and not persistent: best/ and last.pt hold the model only.
        self.register_buffer("class_weight", None, persistent=False)
        self.evaluator = ClassificationEvaluator(self.labels)

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        images, targets = self.blend(images, targets)
        outputs = self.network(images)
        if self.loss_fn is not None:
            loss = self.loss_fn(outputs, targets, images)
        else:
            loss = self.label_loss(logits_of(outputs), targets)
        return {"loss": loss, "logits": logits_of(outputs)}

    def blend(
        self, images: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch as the loss sees it: mixed under ``--mix`` (targets become class blends)."""
        if self.mix != "none":
            images, targets = mix_batch(images, targets, len(self.labels), self.mix, self.mix_alpha)
        return images, targets

    def label_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against the labels, smoothed and class-weighted as the settings say."""
        return F.cross_entropy(
            logits.float(),
            targets,
            weight=self.class_weight,
            label_smoothing=self.label_smoothing,
        )


class ClassificationBuilder(TaskBuilder):
    """Class folders -> a ``ClassificationTask`` for the network ``model_factory`` makes."""

    def __init__(self, model_factory: ModelFactory = vit_model_spec, loss_fn: LossFn | None = None):
        self.model_factory = model_factory
        self.loss_fn = loss_fn

    def check(self, cfg: TrainConfig) -> None:
        check_image_folder(cfg)
        if self.model_factory is vit_model_spec:  # other networks check their own settings
            check_vit_settings(cfg)

    def build(self, cfg: TrainConfig, splits: vdata.DataSplits) -> ClassificationTask:
        assert cfg.label_smoothing is not None and cfg.mix is not None, "resolve_recipe(cfg) first"
        return ClassificationTask(
            self.model_factory(cfg, splits.id2label),
            splits.classes,
            label_smoothing=cfg.label_smoothing,
            mix=cfg.mix,
            mix_alpha=cfg.mix_alpha,
            loss_fn=self.loss_fn,
        )

    def prepare_data(
        self,
        cfg: TrainConfig,
        out: Path,
        task: TrainingTask,
        splits: vdata.DataSplits,
        info: DistInfo,
    ) -> vdata.RunData:
        run_data = super().prepare_data(cfg, out, task, splits, info)
        if isinstance(task, ClassificationTask) and run_data.class_weight is not None:
            task.class_weight = run_data.class_weight.float()
        return run_data
