"""Semantic segmentation: one class per pixel, from images and their masks.

The loss is cross-entropy over the labelled pixels (255 = not labelled, ignored; the recipe's
label smoothing), with class weights (``--class-weights`` or ``--balance weighted-loss``), plus ``--dice-weight`` x a soft
Dice term and, for a DPT head, its auxiliary head's cross-entropy x ``auxiliary_loss_weight``
(transformers' DPTForSemanticSegmentation loss). Logits are resized to the mask (bilinear,
corners not aligned: transformers' rule) before any loss. The evaluator sums one confusion matrix
over every labelled pixel (``vitkit.training.seg_metrics``).

Layer-wise learning-rate decay (``--layer-decay d``): ``lr_scale(name)`` gives each parameter's
multiplier, d^(L - i) for block i of an L-block backbone, d^(L + 1) for its embeddings, 1 for
the head (BEiT; MAE's fine-tuning recipe).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vitkit.atomic_files import atomic_write_text
from vitkit.errors import DatasetError, TrainingError
from vitkit.images.masks import IGNORE_INDEX
from vitkit.models.protocol import logits_of
from vitkit.models.segmentation import upsample_logits
from vitkit.training import data as vdata
from vitkit.training import seg_data
from vitkit.training.checks import check_vit_settings
from vitkit.training.config import TrainConfig
from vitkit.training.distributed import DistInfo
from vitkit.training.evaluate import EvalResult
from vitkit.training.model_spec import ModelSpec
from vitkit.training.plots import plot_confusion_matrix
from vitkit.training.seg_augment import JointTrainTransform
from vitkit.training.seg_config import SegmentationSettings
from vitkit.training.seg_metrics import segmentation_report
from vitkit.training.seg_plots import plot_class_scores
from vitkit.training.seg_specs import segmenter_spec
from vitkit.training.task import TrainingTask
from vitkit.training.task_builder import TaskBuilder

SegmentationFactory = Callable[[TrainConfig, SegmentationSettings, dict[int, str]], ModelSpec]


def soft_dice_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """1 - mean over classes of 2|P∩T| / (|P| + |T|), softmax probabilities against one-hot
    masks, unlabelled pixels left out: segmentation_models_pytorch's multiclass ``DiceLoss``
    (eps 1e-7, no smoothing; a class absent from the batch's masks adds 0 to the mean)."""
    probabilities = logits.float().softmax(dim=1)
    keep = (targets != ignore_index).unsqueeze(1)
    classes = probabilities.shape[1]
    one_hot = F.one_hot(targets.clamp(0, classes - 1), classes).permute(0, 3, 1, 2) * keep
    probabilities = probabilities * keep
    dims = (0, 2, 3)
    intersection = (probabilities * one_hot).sum(dims)
    cardinality = (probabilities + one_hot).sum(dims)
    scores = 2.0 * intersection / cardinality.clamp_min(1e-7)
    present = one_hot.sum(dims) > 0
    return ((1.0 - scores) * present).mean()


class SegmentationTask(TrainingTask):
    """Cross-entropy (+ Dice, + DPT's auxiliary term) per pixel; returns ``{"loss", "logits"}``."""

    pipeline_tag = "image-segmentation"  # the Hub's task name, for the model card

    def __init__(
        self,
        spec: ModelSpec,
        labels: list[str],
        settings: SegmentationSettings,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(spec)
        self.labels = list(labels)
        self.settings = settings
        self.label_smoothing = label_smoothing
        self.class_weight: torch.Tensor | None = None
        if settings.class_weights:
            self.class_weight = torch.tensor(settings.weights, dtype=torch.float32)
        self.evaluator = SegmentationEvaluator(self.labels)
        # transformers' DPT loss: its auxiliary head's cross-entropy, weighted
        dpt = getattr(getattr(spec.model, "config", None), "dpt", None)
        self.auxiliary_weight = float(getattr(dpt, "auxiliary_loss_weight", 0.0))

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        targets = targets.long()
        outputs = self.network(images)
        logits = upsample_logits(logits_of(outputs).float(), targets.shape[-2:])
        loss = self.pixel_loss(logits, targets)
        auxiliary = getattr(outputs, "auxiliary_logits", None)
        if auxiliary is not None:
            auxiliary = upsample_logits(auxiliary.float(), targets.shape[-2:])
            loss = loss + self.auxiliary_weight * self.pixel_loss(auxiliary, targets, dice=False)
        return {"loss": loss, "logits": logits}

    def pixel_loss(
        self, logits: torch.Tensor, targets: torch.Tensor, dice: bool = True
    ) -> torch.Tensor:
        weight = self.class_weight.to(logits.device) if self.class_weight is not None else None
        loss = F.cross_entropy(
            logits,
            targets,
            weight=weight,
            ignore_index=IGNORE_INDEX,
            label_smoothing=self.label_smoothing,
        )
        if dice and self.settings.dice_weight > 0:
            loss = loss + self.settings.dice_weight * soft_dice_loss(logits, targets, IGNORE_INDEX)
        return loss

    def lr_scale(self, name: str) -> float:
        """The learning-rate multiplier of parameter ``name`` (layer-wise decay)."""
        decay = self.settings.layer_decay
        backbone = getattr(self.model, "backbone", None)
        if decay == 1.0 or backbone is None or not name.startswith("backbone."):
            return 1.0
        depth = len(backbone.blocks)
        part = name.split(".")
        if part[1] == "blocks":
            return float(decay ** (depth - int(part[2])))
        if part[1] in ("norm", "fc_norm"):
            return 1.0
        return float(decay ** (depth + 1))  # patch and position embeddings, [CLS], registers


class SegmentationEvaluator:
    """Per-image cross-entropy and confusion counts; the split's mIoU, Dice, pixel accuracy."""

    def __init__(self, labels: list[str]) -> None:
        self.labels = list(labels)

    def batch(
        self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        targets = targets.long()
        logits = upsample_logits(logits_of(model(images)).float(), targets.shape[-2:])
        pixel_losses = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="none")
        labelled = (targets != IGNORE_INDEX).flatten(1).sum(1).clamp_min(1)
        losses = pixel_losses.flatten(1).sum(1) / labelled
        classes = len(self.labels)
        keep = targets != IGNORE_INDEX
        pairs = targets.clamp(0, classes - 1) * classes + logits.argmax(1)
        counts = torch.stack(
            [
                torch.bincount(p[k], minlength=classes * classes)
                for p, k in zip(pairs, keep, strict=True)
            ]
        )
        return {"loss": losses, "confusion": counts}

    def report(self, outputs: dict[str, np.ndarray], targets: np.ndarray) -> dict[str, Any]:
        classes = len(self.labels)
        confusion = outputs["confusion"].sum(axis=0).round().astype(np.int64)
        report = segmentation_report(confusion.reshape(classes, classes), self.labels)
        report["num_samples"] = len(outputs["loss"])
        return report

    def scalars(self, report: dict[str, Any]) -> dict[str, float]:
        return {name: report[name] for name in ("mean_iou", "mean_dice", "pixel_accuracy")}

    def write(self, result: EvalResult, directory: Path, title: str) -> None:
        write_segmentation_outputs(result.report, result.loss, directory, title)


def write_segmentation_outputs(
    report: dict[str, Any], loss: float, directory: Path, title: str
) -> None:
    """metrics.json, confusion_matrix.json, confusion_matrix.png and per_class_iou.png."""

    directory.mkdir(parents=True, exist_ok=True)
    metrics = {k: v for k, v in report.items() if k != "confusion_matrix"}
    metrics["loss"] = loss
    atomic_write_text(directory / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    matrix = {"labels": report["labels"], "matrix": report["confusion_matrix"]}
    matrix.update({"rows": "true", "columns": "predicted", "unit": "pixels"})
    atomic_write_text(directory / "confusion_matrix.json", json.dumps(matrix, indent=1) + "\n")
    plot_confusion_matrix(
        report["confusion_matrix"], report["labels"], directory / "confusion_matrix.png", title
    )
    plot_class_scores(report, directory / "per_class_iou.png", title)


class SegmentationBuilder(TaskBuilder):
    """images/ + masks/ (or a table) -> a ``SegmentationTask`` for the network the factory makes."""

    def __init__(
        self,
        settings: SegmentationSettings | None = None,
        model_factory: SegmentationFactory = segmenter_spec,
    ) -> None:
        self.settings = settings or SegmentationSettings()
        self.model_factory = model_factory

    def check(self, cfg: TrainConfig) -> None:
        if cfg.mix not in (None, "none"):
            raise TrainingError(
                f"--mix {cfg.mix} blends whole-image labels: segmentation trains without it"
            )
        if self.model_factory is segmenter_spec:
            check_vit_settings(cfg)

    def read_splits(self, cfg: TrainConfig, out: Path | None) -> vdata.DataSplits:
        return seg_data.read_mask_splits(cfg.data, out, cfg.val_fraction, cfg.seed)

    def check_splits(self, cfg: TrainConfig, splits: vdata.DataSplits) -> None:
        if self.settings.class_weights and len(self.settings.class_weights) != len(splits.classes):
            raise TrainingError(
                f"--class-weights has {len(self.settings.class_weights)} values for "
                f"{len(splits.classes)} classes ({', '.join(splits.classes)})"
            )
        if len(splits.train) < cfg.batch_size:
            raise TrainingError(
                f"--batch-size {cfg.batch_size} is larger than the training set "
                f"({len(splits.train)} images): lower it"
            )

    def describe_data(self, cfg: TrainConfig, data: vdata.RunData) -> str:
        classes = data.splits.classes
        return (
            f"data: {len(data.train)} train / {len(data.val)} val / "
            f"{len(data.test) if data.test else 0} test images with masks, {len(classes)} "
            f"classes ({', '.join(classes)})\nbalance: {data.balance} "
            f"({len(data.train_indices)} samples per epoch)"
        )

    def build(self, cfg: TrainConfig, splits: vdata.DataSplits) -> SegmentationTask:
        spec = self.model_factory(cfg, self.settings, splits.id2label)
        smoothing = cfg.label_smoothing or 0.0
        return SegmentationTask(spec, splits.classes, self.settings, label_smoothing=smoothing)

    def prepare_data(
        self,
        cfg: TrainConfig,
        out: Path,
        task: TrainingTask,
        splits: vdata.DataSplits,
        info: DistInfo,
    ) -> vdata.RunData:
        return prepare_mask_data(cfg, out, task, splits, info.is_main)


def prepare_mask_data(
    cfg: TrainConfig, out: Path, task: TrainingTask, splits: vdata.DataSplits, is_main: bool
) -> vdata.RunData:
    """Read and check every pair once, balance rare classes, build the datasets."""
    samples = (splits.train, splits.val, splits.test)
    keep = cfg.cache_images == "yes" or (
        cfg.cache_images == "auto" and sum(map(len, samples)) <= 20000
    )
    threads = min(8, os.cpu_count() or 1)
    scans = seg_data.scan_splits(samples, splits.classes, keep=keep, threads=threads)  # type: ignore[arg-type]
    _report_unreadable(cfg, out, [item for scan in scans for item in scan.bad], is_main)
    train, val, test = scans
    if not val.good:
        raise DatasetError(f"{cfg.data}: the validation split has no readable images")
    balance = _balance(cfg.balance, train.presence)
    indices = (
        seg_data.oversample_rare(train.presence, cfg.seed)
        if balance == "oversample"
        else list(range(len(train.good)))
    )
    if balance == "weighted-loss" and isinstance(task, SegmentationTask):
        task.class_weight = seg_data.pixel_class_weights(train.pixel_counts)
    spec = task.spec
    assert cfg.augment is not None, "resolve_recipe(cfg) first"
    augment = JointTrainTransform(cfg.augment, spec.image_size, spec.mean, spec.std)
    evaluate = spec.eval_transform

    def dataset(scan: seg_data.MaskScan, transform: Any) -> seg_data.MaskDataset:
        return seg_data.MaskDataset(scan.good, transform, scan.images, scan.masks)

    return vdata.RunData(
        splits=splits,
        train=dataset(train, augment),  # type: ignore[arg-type]
        val=dataset(val, evaluate),  # type: ignore[arg-type]
        test=dataset(test, evaluate) if test.good else None,  # type: ignore[arg-type]
        train_indices=indices,
        balance=balance,
        class_weight=None,
        bad=[item for scan in scans for item in scan.bad],
    )


def _balance(mode: str, presence: np.ndarray) -> str:
    if mode != "auto":
        return mode
    factors = seg_data.repeat_factors(presence)
    return "oversample" if factors.size and factors.max() > 1.0 else "none"


def _report_unreadable(
    cfg: TrainConfig, out: Path, bad: list[tuple[str, str]], is_main: bool
) -> None:
    if not bad:
        return
    report = vdata.ScanResult([], bad, None).report()
    if cfg.on_bad_image == "fail":
        raise DatasetError(report + "\n(pass --on-bad-image skip to train without them)")
    if is_main:
        atomic_write_text(out / "bad_images.txt", report + "\n")
        print(f"warning: skipping {report}", file=sys.stderr)
