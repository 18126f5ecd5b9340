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
from vitkit.training.specs import ModelFactory, vit_model_spec
from vitkit.training.tasks.base import ModelSpec, TaskBuilder, TrainingTask

# The old hook: ``loss_fn(outputs, targets, images)`` (outputs: the model's forward).
LossFn = Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]


class ClassificationTask(TrainingTask):
    """Cross-entropy on the (mixed) batch; returns ``{"loss", "logits"}``."""

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
        self.class_weight: torch.Tensor | None = None
        self.evaluator = ClassificationEvaluator(self.labels)

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.mix != "none":
            images, targets = mix_batch(images, targets, len(self.labels), self.mix, self.mix_alpha)
        outputs = self.network(images)
        return {"loss": self.loss(outputs, targets, images), "logits": logits_of(outputs)}

    def loss(self, outputs: Any, targets: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        if self.loss_fn is not None:
            return self.loss_fn(outputs, targets, images)
        logits = logits_of(outputs).float()
        weight = self.class_weight.to(logits.device) if self.class_weight is not None else None
        return F.cross_entropy(logits, targets, weight=weight, label_smoothing=self.label_smoothing)


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
        if isinstance(task, ClassificationTask):
            task.class_weight = run_data.class_weight
        return run_data
