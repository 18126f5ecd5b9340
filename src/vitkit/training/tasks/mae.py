"""MAE pre-training as a training task: unlabeled images in, a ViTMAEForPreTraining directory out.

The trainer's loop runs it unchanged (DDP, exact resume, warm-up + cosine, logs, best/ by
validation loss): ``train(cfg, MAEBuilder(settings))``. What differs from classification lives
in four small modules beside this one:

- ``mae_data``: every image under ``--data`` (nested folders fine, names ignored), a seeded
  held-out share, MAE's crops, and each image's mask noise drawn with its crop under the
  sampler's per-sample seed (so N processes and a resumed run mask exactly as one run does);
- ``mae_spec``: the MAE, from a preset, from any ViT checkpoint (head dropped) or continued from
  an MAE directory, saved as a ViTMAEForPreTraining directory (best/);
- ``mae_config``: the settings (mask ratio, decoder, ``--norm-pix-loss``, base lr) and MAE's
  optimisation recipe (AdamW betas 0.9/0.95, weight decay 0.05, lr = base x batch / 256);
- ``mae_pictures``: ``reconstructions/epoch_NNN.png`` after every epoch (the builder's callback).

Here: the task (``MAE(images, noise)`` -> ``{"loss"}``, the squared error on the hidden
patches), its evaluator (the same loss on fixed validation masks) and the builder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitkit.atomic_files import atomic_write_text
from vitkit.errors import TrainingError
from vitkit.models.mae import MAE
from vitkit.training import data as vdata
from vitkit.training.callbacks import Callback
from vitkit.training.config import TrainConfig
from vitkit.training.distributed import DistInfo
from vitkit.training.evaluate import EvalResult
from vitkit.training.model_spec import ModelSpec
from vitkit.training.task import TrainingTask
from vitkit.training.task_builder import TaskBuilder
from vitkit.training.tasks.mae_config import MAE_BETAS, PretrainConfig, pretrain_recipe
from vitkit.training.tasks.mae_data import MaskedImages, mae_train_transform, unlabeled_splits
from vitkit.training.tasks.mae_pictures import ReconstructionPictures
from vitkit.training.tasks.mae_spec import mae_model_spec

__all__ = ["MAEBuilder", "MAETask", "ReconstructionEvaluator"]


# ---- the task -----------------------------------------------------------------------------------
class ReconstructionEvaluator:
    """Judges an MAE by its reconstruction loss on the hidden patches (per image: all images
    hide the same number of patches, so the mean over images is the loss over patches)."""

    def batch(
        self, model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        assert isinstance(model, MAE)
        output = model(images, noise=targets)
        target = model.target_patches(images)
        per_patch = ((output.logits.float() - target) ** 2).mean(-1)
        return {"loss": (per_patch * output.mask).sum(1) / output.mask.sum(1)}

    def report(self, outputs: dict[str, np.ndarray], targets: np.ndarray) -> dict[str, Any]:
        return {"reconstruction_loss": float(outputs["loss"].mean()), "num_samples": len(targets)}

    def scalars(self, report: dict[str, Any]) -> dict[str, float]:
        return {}  # the loop logs val_loss, which is the reconstruction loss

    def write(self, result: EvalResult, directory: Path, title: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        report = {**result.report, "title": title}
        atomic_write_text(directory / "metrics.json", json.dumps(report, indent=2) + "\n")


class MAETask(TrainingTask):
    """MAE pre-training: the batch's targets are the mask noise; returns ``{"loss"}``."""

    adam_betas = MAE_BETAS
    pipeline_tag = "image-feature-extraction"

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.evaluator = ReconstructionEvaluator()

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": self.network(images, noise=targets).loss}


class MAEBuilder(TaskBuilder):
    """Unlabeled images under ``cfg.data`` -> an ``MAETask``, trained with MAE's optimisation
    filled into ``cfg`` where it left values unset; reconstruction pictures after every epoch."""

    def __init__(self, settings: PretrainConfig) -> None:
        self.settings = settings

    def resolve(self, cfg: TrainConfig) -> TrainConfig:
        return pretrain_recipe(cfg, self.settings)

    def callbacks(self, cfg: TrainConfig) -> list[Callback]:
        return [ReconstructionPictures(self.settings.pictures)]

    def read_splits(self, cfg: TrainConfig, out: Path | None) -> vdata.DataSplits:
        return unlabeled_splits(
            Path(cfg.data), out, cfg.val_fraction, self.settings.max_val_images, cfg.seed
        )

    def check_splits(self, cfg: TrainConfig, splits: vdata.DataSplits) -> None:
        if cfg.batch_size > len(splits.train):
            raise TrainingError(
                f"--batch-size {cfg.batch_size} is larger than the {len(splits.train)} training "
                f"images under {cfg.data}: use --batch-size {len(splits.train)} or less"
            )

    def describe_data(self, cfg: TrainConfig, data: vdata.RunData) -> str:
        return (
            f"data: {len(data.train)} unlabeled images to pre-train on, {len(data.val)} held "
            f"out for the validation reconstruction loss and pictures; MAE crops (scale "
            f"{self.settings.min_crop_scale:g}-1, bicubic) and horizontal flips"
        )

    def build(self, cfg: TrainConfig, splits: vdata.DataSplits) -> MAETask:
        return MAETask(mae_model_spec(cfg, self.settings))

    def prepare_data(
        self,
        cfg: TrainConfig,
        out: Path,
        task: TrainingTask,
        splits: vdata.DataSplits,
        info: DistInfo,
    ) -> vdata.RunData:
        """The trainer's scan (bad images reported once, decoded images cached), then MAE's
        crops and masks on the training images and fixed masks on the validation images."""
        scanned = super().prepare_data(cfg, out, task, splits, info)
        spec = task.spec
        assert isinstance(task.model, MAE)
        patches = task.model.config.encoder.num_patches
        crops = mae_train_transform(
            spec.image_size, spec.mean, spec.std, self.settings.min_crop_scale
        )
        if info.is_main:
            atomic_write_text(
                out / "pretrain_config.json", json.dumps(self.settings.to_dict(), indent=2) + "\n"
            )
        return vdata.RunData(
            splits=scanned.splits,
            train=MaskedImages(scanned.train.samples, crops, scanned.train.images, patches),
            val=MaskedImages(scanned.val.samples, spec.eval_transform, scanned.val.images, patches),
            test=None,
            train_indices=list(range(len(scanned.train))),
            balance="none",
            class_weight=None,
            bad=scanned.bad,
        )
