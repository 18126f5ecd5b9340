"""The settings of ``vitkit compare``, each written once (torch-free: ``--help`` reads it).

Fields named as ``TrainConfig``'s (epochs, batch_size, optimizer, lr, augment, image_size, seed,
device, progress) are handed to every row's training run as they are; the rest say which rows
to run and how the ViT, the CNN baseline and the distilled student are built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitkit.errors import CompareError, UsageError
from vitkit.models.config import PATCH_EMBEDS, preset
from vitkit.options import option, reuse
from vitkit.training.config import DISTILL_KINDS, MIX_MODES, TrainConfig

ROWS = ("baseline", "scratch", "finetune224", "finetune384", "distilled")
RESNET_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


DEMO_SETS = ("digits", "fashion-mnist")


@dataclass(frozen=True)
class CompareData:
    """Where ``vitkit compare`` finds its images: a folder of the user's, or a demo set it builds
    into OUT/data (exactly one of the two)."""

    data: str | None = option(
        None,
        "image folder with train/ and test/ class sub-folders, or a folder of label tables "
        "(train.csv and test.csv, val.csv optional: every row trains multi-label)",
        group="data",
    )
    demo_data: str | None = option(
        None,
        "build an unbalanced folder from bundled data into OUT/data (class 8 / bag cut to 10%)",
        group="data",
        choices=DEMO_SETS,
    )

    def __post_init__(self) -> None:
        if (self.data is None) == (self.demo_data is None):
            raise UsageError("give one of --data (your images) and --demo-data (a bundled set)")

    def folder(self, out: str) -> str:
        """The image folder the rows train on."""
        return str(Path(out) / "data") if self.demo_data else str(self.data)


@dataclass
class CompareConfig:
    data: str = option(
        help="image folder with train/ and test/ class sub-folders, or a folder of label tables "
        "(train.csv and test.csv: multi-label)",
        group="data",
        cli=False,
    )
    out: str = reuse(TrainConfig, "out", help="output folder (rows, table, charts)")
    rows: list[str] = option(
        help="comma-separated rows", group="rows", default_factory=lambda: list(ROWS)
    )
    pretrained: str | None = option(
        None,
        "ViT checkpoint for the fine-tune rows (anything vitkit loads)",
        group="rows",
        default_help="an MAE pre-trained here on the training images",
    )
    # the ViT rows: a preset plus overrides; CPU-sized by default
    vit_preset: str = option(
        "vit-tiny-patch4-16", "ViT architecture for all ViT rows", group="model"
    )
    vit_overrides: dict[str, Any] = option(
        help="override a ViTConfig field of the ViT rows (repeatable)",
        group="model",
        flags=("--vit-arg",),
        default_factory=lambda: {
            "hidden_size": 64,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "intermediate_size": 128,
        },
    )
    vit_patch_embed: str = option(
        "linear",
        "the scratch row's patch embedding: linear (the paper's ViT) or conv (the from-scratch "
        "recipe's convolutional stem)",
        group="model",
        choices=PATCH_EMBEDS,
    )
    image_size: int = reuse(TrainConfig, "image_size", 16, help="base resolution of every row")
    high_image_size: int | None = option(
        None,
        "finetune384 resolution",
        group="model",
        default_help="base x 384/224, rounded to the patch size",
    )
    baseline_arch: str = option("resnet18", "the CNN baseline", group="model", choices=RESNET_ARCHS)
    baseline_weights: str | None = option(
        None, "torchvision .pth/.safetensors or HF ResNet directory", group="model"
    )
    epochs: int = reuse(
        TrainConfig,
        "epochs",
        50,
        help="epochs per ViT row (transformers from scratch need long schedules)",
    )
    baseline_epochs: int | None = option(
        15,
        "epochs for the CNN baseline, which converges far sooner",
        group="training",
        default_help="15; none: --epochs",
    )
    pretrain_epochs: int = option(
        30, "MAE pre-training epochs (without --pretrained)", group="training"
    )
    # Batch 32 (twice the optimiser steps of 64 at the same cost): the small ViT was step-starved
    # at 64 (scratch macro-F1 0.90 -> 0.94 on the digits demo); the CNN gets the same batches.
    batch_size: int = reuse(TrainConfig, "batch_size", 32, help="batch size of every row")
    optimizer: str = reuse(TrainConfig, "optimizer", "adamw", help="every row's optimiser")
    lr: float = reuse(TrainConfig, "lr", 2e-3, help="every row's peak learning rate")
    augment: str = reuse(TrainConfig, "augment", "none", help="training augmentation for every row")
    # Every row trains with one recipe (whether from scratch or not), so the rows compare.
    warmup_fraction: float = reuse(
        TrainConfig,
        "warmup_fraction",
        0.05,
        help="share of each row's steps for the linear warm-up",
    )
    label_smoothing: float = reuse(
        TrainConfig, "label_smoothing", 0.0, help="every row's label smoothing"
    )
    # Soft distillation (KL at T=4, alpha 0.7) beat DeiT's hard labels on validation loss and
    # macro-F1 for the CPU-sized student; see README "Which model wins on your images?".
    distill_kind: str = option(
        "soft", "teacher term of the distilled row", group="distillation", choices=DISTILL_KINDS
    )
    distill_alpha: float = option(0.7, "weight of the teacher term", group="distillation")
    distill_temperature: float = option(
        4.0, "softmax temperature of the soft term", group="distillation"
    )
    # The distilled row mixes each batch (cutmix) and the teacher labels the mixed images:
    # "function matching" (Beyer et al., 2022). On the digits demo (13 training images of the
    # minority class) it made the student both better and steadier: test macro-F1 0.951-0.961 over
    # seeds 0-3 against 0.943/0.955 without mixing (0.917 in a 2-thread run) and 0.88-0.94 for
    # the scratch ViT; cutmix without a teacher did not help the scratch ViT (0.917, seed 0), so
    # the gain is the teacher's answers on the mixed images. Mixup: 0.943-0.950.
    distill_mix: str = option(
        "cutmix",
        "mix the distilled row's batches; the teacher labels the mixed images (function matching)",
        group="distillation",
        choices=MIX_MODES,
    )
    distill_mix_alpha: float = option(
        1.0, "Beta(alpha, alpha) of the distilled row's mixing weight", group="distillation"
    )
    seed: int = reuse(TrainConfig, "seed")
    device: str | None = reuse(TrainConfig, "device")
    progress: bool = reuse(TrainConfig, "progress")
    # every row is one tracked run, nested under one MLflow run of the comparison
    report_to: list[str] = reuse(
        TrainConfig,
        "report_to",
        help="experiment trackers for every row, comma-separated: none, tensorboard "
        "(OUT/rows/ROW/tensorboard), mlflow (one run per row under one run of the comparison)",
    )
    experiment: str | None = reuse(
        TrainConfig, "experiment", help="MLflow experiment the comparison is filed under"
    )
    parent_run: str | None = option(
        None, "MLflow run id of the comparison (set by compare)", group="run", cli=False
    )

    def __post_init__(self) -> None:
        unknown = [row for row in self.rows if row not in ROWS]
        if unknown:
            raise CompareError(f"unknown row(s) {unknown}: choose from {', '.join(ROWS)}")
        self.rows = [
            row for row in ROWS if row in self.rows
        ]  # fixed order; distilled after baseline

    @property
    def patch_size(self) -> int:
        return preset(self.vit_preset, **self.vit_overrides).patch_size

    @property
    def cnn_epochs(self) -> int:
        return self.baseline_epochs or self.epochs

    @property
    def high_size(self) -> int:
        if self.high_image_size is not None:
            return self.high_image_size
        patch = self.patch_size
        return max(patch, round(self.image_size * 384 / 224 / patch) * patch)

    def settings(self) -> dict[str, Any]:
        """What decides the numbers (a resumed compare must not silently change them)."""
        data = dataclasses.asdict(self)
        for key in ("out", "rows", "device", "progress", "report_to", "experiment", "parent_run"):
            data.pop(key)
        return data
