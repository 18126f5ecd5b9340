"""`vitkit pretrain`: masked-autoencoder (MAE) pre-training on a folder of unlabeled images."""

from __future__ import annotations

import argparse
import os
from typing import Any

from vitkit.cli._options import add_options, config_from_args
from vitkit.training.config import TrainConfig
from vitkit.training.tasks.mae_config import PretrainConfig

# The TrainConfig fields that mean something for pre-training (no labels, no head, no recipe).
TRAIN_OPTIONS = (
    "data",
    "out",
    "model",
    "preset",
    "model_overrides",
    "image_size",
    "epochs",
    "batch_size",
    "grad_accum",
    "lr",
    "weight_decay",
    "warmup_fraction",
    "warmup_steps",
    "clip_grad_norm",
    "val_fraction",
    "on_bad_image",
    "cache_images",
    "workers",
    "eval_batch_size",
    "seed",
    "device",
    "resume",
    "log_every",
    "progress",
    "report_to",
    "experiment",
    "run_name",
)

# Where TrainConfig's help speaks of classes and fine-tuning, pre-training says what it does.
OWN_HELP = {
    "data": "folder of images, nested or not (folder names are ignored), or a label table "
    "(.csv / .jsonl: its images, labels unused)",
    "model": "start the encoder from this checkpoint (anything vitkit loads; an MAE directory "
    "with its decoder is continued) instead of random weights",
    "preset": "encoder architecture when starting from random weights (no --model)",
    "model_overrides": "override a ViTConfig field of --preset (repeatable), e.g. hidden_size=64",
    "val_fraction": "share of the images held out for the validation reconstruction loss",
}

EPILOG = """\
data: every image under --data, in nested folders or not (folder names are ignored), or every
image a label table lists (train.csv of a multi-label set; labels unused); a seeded share
(--val-fraction, at most --max-val-images) is held out to measure the reconstruction.

examples:
  # MAE from scratch on unlabeled slides: ViT-S/16, the paper's decoder, 400 epochs
  vitkit pretrain --data unlabeled/ --out runs/mae --preset vit-small-patch16-224 \\
      --norm-pix-loss --epochs 400 --batch-size 256
  # a tiny ViT on small images, light decoder
  vitkit pretrain --data digits/ --out runs/mae-tiny --preset vit-tiny-patch4-32 \\
      --model-arg num_hidden_layers=4 --decoder-depth 2 --decoder-width 64 --epochs 50
  # start from a published checkpoint (any ViT vitkit loads; an MAE directory with its decoder
  # continues as it is)
  vitkit pretrain --data factory/ --out runs/mae-ft --model facebook/vit-mae-base --epochs 50
  # then fine-tune the encoder on the few labeled images (the decoder is dropped)
  vitkit train --data labeled/ --model runs/mae/best --out runs/classifier
  # continue after a crash; 4 processes
  vitkit pretrain --data unlabeled/ --out runs/mae --preset vit-small-patch16-224 --resume
  torchrun --nproc-per-node 4 -m vitkit pretrain --data unlabeled/ --out runs/mae ...

Optimisation as MAE's main_pretrain.py: AdamW betas (0.9, 0.95), weight decay 0.05, peak lr
--base-lr x --batch-size / 256 (unless --lr), 5% warm-up then cosine; crops of scale 0.2-1
and horizontal flips. OUT gets best/ (lowest validation reconstruction loss, a
ViTMAEForPreTraining directory transformers loads), last.pt (for --resume), metrics.jsonl,
metrics.csv, curves.png and reconstructions/epoch_NNN.png (original | masked | reconstruction).
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="MAE pre-training of a ViT on unlabeled images",
        description="Pre-train a ViT as a masked autoencoder (He et al., 2021) on every image "
        "of a folder, labels unused; fine-tune the result with `vitkit train --model OUT/best`.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser, TrainConfig, only=TRAIN_OPTIONS, helps=OWN_HELP)
    add_options(parser, PretrainConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    from vitkit.training.distributed import cleanup_distributed
    from vitkit.training.tasks.mae import MAEBuilder
    from vitkit.training.trainer import train

    cfg = config_from_args(TrainConfig, args)
    settings = config_from_args(PretrainConfig, args)
    try:
        result = train(cfg, MAEBuilder(settings))
    finally:
        cleanup_distributed()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # only rank 0 reports
    best = result.out / "best"
    print(
        f"best epoch {result.best_epoch} (val reconstruction loss {result.best_val_loss:.4f}): "
        f"{best}\npictures: {result.out / 'reconstructions'}\n"
        f"fine-tune it: vitkit train --data LABELED --model {best} --out RUN"
    )
    return 0
