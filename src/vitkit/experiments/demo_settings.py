"""What ``vitkit demo`` trains, and on what: torch-free (the command's options are generated
from these fields, and its recipe is read by tests and benchmarks that reproduce it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vitkit.errors import UsageError
from vitkit.options import option

# A ViT small enough to train on 2 CPU cores in about a minute, tuned on this data (12 runs
# across 4 seeds): the 8x8 digit cut into four 4x4 patches, 2 blocks of width 64. More tokens
# (2x2 or 1x1 patches) or depth learned slower within the time budget.
DEMO_PRESET = "vit-tiny-patch4-8"
# 28x28 clothes need more than the digits' 8x8: 16x16 input, 16 tokens
FASHION_PRESET = "vit-tiny-patch4-16"
DEMO_MODEL: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
}
DEMO_TRAINING: dict[str, Any] = {
    # the paper's patch embedding: the demo's model loads in transformers, and its numbers
    # (README, tests/test_train_digits.py) were measured so
    "patch_embed": "linear",
    "epochs": 12,
    "batch_size": 32,
    "optimizer": "adamw",
    "lr": 3e-3,
    "warmup_fraction": 0.1,
    "label_smoothing": 0.1,
    "mix": "none",
}
# The training options the demo shares with `vitkit train`, at the demo's own defaults.
DEMO_TRAIN_OPTIONS = ("epochs", "balance", "seed", "device", "progress")
DEMO_TRAIN_DEFAULTS = {"epochs": DEMO_TRAINING["epochs"], "balance": "oversample", "device": "cpu"}


@dataclass(frozen=True)
class DemoSettings:
    out: str = option("runs/demo", "output folder", group="demo")
    dataset: str = option(
        "digits",
        "digits (always there), fashion-mnist (Debian package), auto = fashion-mnist when "
        "installed",
        group="demo",
        choices=("digits", "fashion-mnist", "auto"),
    )
    fashion_mnist_dir: str | None = option(
        None,
        "folder with Fashion-MNIST's *-ubyte.gz files",
        group="demo",
        default_help="/usr/share/datasets/fashion-mnist",
    )

    def __post_init__(self) -> None:
        if self.fashion_mnist_dir is not None and self.dataset == "digits":
            raise UsageError("--fashion-mnist-dir needs --dataset fashion-mnist or auto")
