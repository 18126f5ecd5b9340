"""The settings MAE pre-training adds to a training run, each written once (torch-free, so
``vitkit pretrain --help`` stays fast).

The optimisation is MAE's own (facebookresearch/mae ``main_pretrain.py``): AdamW with betas
(0.9, 0.95) and weight decay 0.05, a peak learning rate of ``base_lr`` x batch / 256, linear
warm-up (40 of 800 epochs there: 5%) then cosine decay; images are random-resized crops of
scale 0.2-1 with horizontal flips. ``pretrain_recipe`` fills those into a ``TrainConfig``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from vitkit.options import option
from vitkit.training.config import TrainConfig

MAE_BETAS = (0.9, 0.95)
MAE_WEIGHT_DECAY = 0.05
MAE_WARMUP_FRACTION = 0.05
MAE_BASE_LR = 1.5e-4
PAPER_DECODER_DEPTH = 8
PAPER_DECODER_WIDTH = 512


@dataclass
class PretrainConfig:
    mask_ratio: float = option(0.75, "share of patches hidden from the encoder", group="mae")
    decoder_depth: int | None = option(
        None,
        "decoder blocks",
        group="mae",
        default_help=f"the checkpoint's when continuing an MAE run, else {PAPER_DECODER_DEPTH}",
    )
    decoder_width: int | None = option(
        None,
        "decoder width (heads of 32 channels, MLP 4x)",
        group="mae",
        default_help=f"the checkpoint's when continuing an MAE run, else {PAPER_DECODER_WIDTH}",
    )
    norm_pix_loss: bool = option(
        False,
        "predict per-patch normalised pixels (the paper's better representations)",
        group="mae",
    )
    base_lr: float = option(
        MAE_BASE_LR,
        "MAE's base learning rate: the peak --lr is base-lr x batch-size / 256 unless --lr is given",
        group="mae",
    )
    min_crop_scale: float = option(
        0.2, "smallest crop area of the random-resized crop (MAE: 0.2)", group="mae"
    )
    pictures: int = option(
        8, "validation images in each epoch's reconstruction PNG (0: none)", group="mae"
    )
    max_val_images: int = option(
        1000, "at most this many images are held out for validation", group="mae"
    )

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def peak_lr(cfg: TrainConfig, settings: PretrainConfig) -> float:
    """``--lr`` if given, else MAE's linear scaling rule: base_lr x batch / 256."""
    return cfg.lr if cfg.lr is not None else settings.base_lr * cfg.batch_size / 256


def pretrain_recipe(cfg: TrainConfig, settings: PretrainConfig) -> TrainConfig:
    """``cfg`` with MAE's optimisation filled in wherever it left a value unset."""
    return dataclasses.replace(
        cfg,
        optimizer="adamw",
        lr=peak_lr(cfg, settings),
        weight_decay=cfg.weight_decay if cfg.weight_decay is not None else MAE_WEIGHT_DECAY,
        warmup_fraction=(
            cfg.warmup_fraction if cfg.warmup_fraction is not None else MAE_WARMUP_FRACTION
        ),
        label_smoothing=0.0,
        augment="none",  # the task brings its own crops (mae_train_transform)
        mix="none",
        balance="none",
        from_scratch=cfg.model is None,
        freeze_backbone=False,
    )
