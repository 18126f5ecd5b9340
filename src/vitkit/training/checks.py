"""Impossible settings refused before any work, each with one line that names the fix.

Three moments, each as early as the facts are known:

- ``check_settings``: the settings alone (ranges, batch arithmetic, device), and
  ``check_vit_settings`` those that choose a ViT (a task builder calls it; preset and image
  size of a from-scratch ViT), before the data is read or a model is built;
- ``check_model``: the built network against the settings (a checkpoint's patch size);
- ``check_class_splits``: a class-folder listing against the settings (classes, batch size),
  before any image is decoded (``TaskBuilder.check_splits``'s default).

Each raises ``TrainingError``; the CLI prints it as one line and exits 1.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from vitkit.checkpoints.hub import source_kind
from vitkit.errors import TrainingError
from vitkit.training import data as vdata
from vitkit.training.config import LR_DEFAULTS, REPORT_TO, TrainConfig
from vitkit.training.specs import preset_config, scratch_overrides
from vitkit.training.stored_data import store_kind


def check_settings(cfg: TrainConfig, world_size: int = 1, *, check_data: bool = True) -> None:
    """Everything knowable from ``cfg`` alone (the recipe already resolved)."""
    _check_ranges(cfg)
    per_step = world_size * cfg.grad_accum
    if cfg.batch_size % per_step:
        raise TrainingError(
            f"--batch-size {cfg.batch_size} must be a multiple of processes x --grad-accum "
            f"({world_size} x {cfg.grad_accum} = {per_step}), e.g. "
            f"--batch-size {max(per_step, cfg.batch_size // per_step * per_step)}"
        )
    check_device(cfg.device)
    check_report_to(cfg.report_to)
    if check_data and not Path(cfg.data).exists():
        raise TrainingError(f"--data {cfg.data}: no such file or folder")


def _check_ranges(cfg: TrainConfig) -> None:
    rules: list[tuple[bool, str]] = [
        (cfg.epochs >= 1, f"--epochs {cfg.epochs}: train at least 1 epoch"),
        (cfg.batch_size >= 1, f"--batch-size {cfg.batch_size}: use 1 or more"),
        (cfg.grad_accum >= 1, f"--grad-accum {cfg.grad_accum}: use 1 or more"),
        (cfg.lr is None or cfg.lr > 0, f"--lr {cfg.lr}: the learning rate must be > 0"),
        (
            cfg.weight_decay is None or cfg.weight_decay >= 0,
            f"--weight-decay {cfg.weight_decay}: use 0 or more",
        ),
        (0 <= cfg.momentum < 1, f"--momentum {cfg.momentum}: use a value in [0, 1)"),
        (
            cfg.warmup_fraction is None or 0 <= cfg.warmup_fraction <= 1,
            f"--warmup-fraction {cfg.warmup_fraction}: use a share in [0, 1]",
        ),
        (
            cfg.warmup_steps is None or cfg.warmup_steps >= 0,
            f"--warmup-steps {cfg.warmup_steps}: use 0 or more",
        ),
        (cfg.clip_grad_norm >= 0, f"--clip-grad-norm {cfg.clip_grad_norm}: use 0 (off) or more"),
        (
            cfg.label_smoothing is None or 0 <= cfg.label_smoothing < 1,
            f"--label-smoothing {cfg.label_smoothing}: use a value in [0, 1)",
        ),
        (cfg.mix_alpha > 0, f"--mix-alpha {cfg.mix_alpha}: mix alpha must be > 0"),
        (
            0 < cfg.val_fraction < 1,
            f"--val-fraction {cfg.val_fraction}: use a share in (0, 1), e.g. 0.1",
        ),
        (cfg.log_every >= 1, f"--log-every {cfg.log_every}: use 1 or more"),
        (cfg.workers is None or cfg.workers >= 0, f"--workers {cfg.workers}: use 0 or more"),
        (
            cfg.eval_batch_size is None or cfg.eval_batch_size >= 1,
            f"--eval-batch-size {cfg.eval_batch_size}: use 1 or more",
        ),
        (
            cfg.image_size is None or cfg.image_size >= 1,
            f"--image-size {cfg.image_size}: use a positive size",
        ),
    ]
    for ok, message in rules:
        if not ok:
            raise TrainingError(message)
    if cfg.optimizer is not None and cfg.optimizer not in LR_DEFAULTS:
        raise TrainingError(f"unknown optimizer {cfg.optimizer!r}: choose sgd or adamw")


def check_vit_settings(cfg: TrainConfig) -> None:
    """The settings that choose a ViT (--model / --from-scratch --preset --model-arg) agree,
    and a from-scratch ViT's image size is a multiple of its patch size."""
    if cfg.model is None and not cfg.from_scratch:
        raise TrainingError(
            "name a checkpoint to fine-tune with --model, or train with --from-scratch --preset NAME"
        )
    if cfg.model is not None and cfg.from_scratch:
        raise TrainingError(
            f"--model {cfg.model} and --from-scratch exclude each other: drop --from-scratch to "
            "fine-tune the checkpoint, or drop --model to train --preset from random weights"
        )
    if cfg.model is not None and source_kind(cfg.model) is None:
        raise TrainingError(
            f"--model {cfg.model}: no such file or directory (and not a Hugging Face Hub id "
            "like google/vit-base-patch16-224)"
        )
    if cfg.model is not None and cfg.patch_embed is not None:
        raise TrainingError(
            f"--patch-embed {cfg.patch_embed} builds a --from-scratch ViT; a checkpoint "
            f"({cfg.model}) keeps its own patch embedding: drop --patch-embed"
        )
    if cfg.from_scratch:
        config = preset_config(cfg.preset, scratch_overrides(cfg), cfg.image_size)
        check_image_size(config.image_hw, config.patch_size, f"--preset {cfg.preset}")


def check_device(device: str | None) -> None:
    """A device string torch knows, and that this machine has."""
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise TrainingError(f"--device {device}: unknown device; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError(f"--device {device}: no CUDA device here; use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise TrainingError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA "
                f"device(s) (cuda:0 ... cuda:{torch.cuda.device_count() - 1})"
            )
    elif parsed.type != "cpu":
        raise TrainingError(f"--device {device}: vitkit trains on cpu or cuda")


def check_image_size(image_hw: tuple[int, int], patch_size: int, what: str) -> None:
    height, width = image_hw
    if height % patch_size or width % patch_size:
        lower = max(height, width) // patch_size * patch_size
        sizes = " or ".join(str(size) for size in (lower, lower + patch_size) if size > 0)
        raise TrainingError(
            f"image size {height}x{width} is not a multiple of the patch size {patch_size} of "
            f"{what}: use --image-size {sizes}, or smaller patches (a preset such as "
            "vit-tiny-patch4-32, or --model-arg patch_size=4 from scratch)"
        )


def check_image_folder(cfg: TrainConfig) -> None:
    if store_kind(cfg.data) is not None:  # a .parquet file or a .tar shard
        return
    if Path(cfg.data).exists() and not Path(cfg.data).is_dir():
        raise TrainingError(
            f"--data {cfg.data}: a file; this task reads an image folder (DATA/<class>/*.png)"
        )


def check_model(cfg: TrainConfig, spec: Any) -> None:
    """The built network against the settings (a fine-tuned checkpoint's own patch size)."""
    if spec.patch_size is not None:
        check_image_size(spec.image_size, spec.patch_size, cfg.model or cfg.preset)


def check_class_splits(cfg: TrainConfig, splits: vdata.DataSplits) -> None:
    """A class-folder listing against the settings, before any image is decoded."""
    if len(splits.classes) < 2:
        raise TrainingError(
            f"--data {cfg.data}: {len(splits.classes)} class folder(s) ({', '.join(splits.classes)}); "
            "a classifier needs at least 2 (one sub-folder per class)"
        )
    if not splits.val:
        raise TrainingError(
            f"--data {cfg.data}: the validation split is empty; add images, raise "
            "--val-fraction, or give a val/ folder"
        )
    counts = vdata.class_counts([s.label for s in splits.train], len(splits.classes))
    present = counts[counts > 0]
    balanced = vdata.resolve_balance(cfg.balance, [s.label for s in splits.train], len(counts))
    per_epoch = int(present.max()) * len(present) if balanced == "oversample" else len(splits.train)
    if cfg.batch_size > per_epoch:
        raise TrainingError(
            f"--batch-size {cfg.batch_size} is larger than the training set ({per_epoch} images "
            f"per epoch{' after oversampling' if balanced == 'oversample' else ''}): use --batch-size "
            f"{_largest_batch(per_epoch, cfg.grad_accum)} or less"
        )


def _largest_batch(images: int, multiple: int) -> int:
    return max(multiple, images // multiple * multiple)


# tracker -> (module that must import, the extra that installs it)
_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}


def check_report_to(report_to: list[str], flag: str = "--report-to") -> None:
    """Refuse unknown trackers, and trackers whose library is missing (naming the extra)."""
    unknown = [name for name in report_to if name not in REPORT_TO]
    if unknown:
        raise TrainingError(f"{flag} {','.join(unknown)}: choose from {', '.join(REPORT_TO)}")
    if "none" in report_to and len(report_to) > 1:
        raise TrainingError(f"{flag} {','.join(report_to)}: 'none' cannot be combined")
    for name in report_to:
        if name in _PACKAGES and importlib.util.find_spec(_PACKAGES[name][0]) is None:
            raise TrainingError(
                f"{flag} {name} needs the {name} package: pip install 'vitkit[{_PACKAGES[name][1]}]'"
            )
    if "mlflow" in report_to:
        _check_mlflow_store(flag)


def _check_mlflow_store(flag: str) -> None:
    """Open the MLflow store now: a store MLflow cannot open fails before the first epoch."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    try:
        mlflow.MlflowClient(tracking_uri=uri)
    except Exception as error:  # MLflow raises many types for one thing: the store won't open
        reason = str(error).strip().split(". ")[0]
        raise TrainingError(
            f"{flag} mlflow: cannot open the MLflow store {uri} ({reason}); set "
            "MLFLOW_TRACKING_URI to your tracking server or a store this MLflow opens, or "
            "pip install 'vitkit[mlflow]' for the default local one"
        ) from None
