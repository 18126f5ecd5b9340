"""``vitkit demo`` as library calls: the data folder it builds and the training run it makes.

The command prints between these steps; a Python user gets the same folder and config (and
passes the config to ``vitkit.training.trainer.train``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitkit.errors import VitkitError
from vitkit.experiments.demo_data import (
    FASHION_MNIST_DIR,
    DemoData,
    build_demo_folder,
    fashion_mnist_available,
)
from vitkit.experiments.demo_settings import (
    DEMO_MODEL,
    DEMO_PRESET,
    DEMO_TRAINING,
    FASHION_PRESET,
    DemoSettings,
)
from vitkit.training.config import TrainConfig

IMAGE_SIZE = 32  # the PNGs' side; the preset resizes to its own input


def chosen_dataset(demo: DemoSettings) -> tuple[str, Path]:
    """``--dataset`` resolved ("auto": Fashion-MNIST where Debian's package is installed, else
    the bundled digits) and the Fashion-MNIST folder; a clear error where it is asked for and
    missing."""
    fashion_dir = Path(demo.fashion_mnist_dir) if demo.fashion_mnist_dir else FASHION_MNIST_DIR
    dataset = demo.dataset
    if dataset == "auto":
        dataset = "fashion-mnist" if fashion_mnist_available(fashion_dir) else "digits"
    if dataset == "fashion-mnist" and not fashion_mnist_available(fashion_dir):
        raise VitkitError(
            f"Fashion-MNIST is not in {fashion_dir}: install Debian's package "
            "(sudo apt-get install dataset-fashion-mnist), pass --fashion-mnist-dir, "
            "or run the demo on the bundled digits (the default)"
        )
    return dataset, fashion_dir


def build_demo_data(demo: DemoSettings, seed: int) -> tuple[str, DemoData]:
    """The unbalanced train/test image folder under ``OUT/data``, and which dataset it holds."""
    dataset, fashion_dir = chosen_dataset(demo)
    data = build_demo_folder(
        Path(demo.out) / "data", dataset, size=IMAGE_SIZE, seed=seed, fashion_mnist_dir=fashion_dir
    )
    return dataset, data


def demo_preset(dataset: str) -> str:
    return DEMO_PRESET if dataset == "digits" else FASHION_PRESET


def demo_train_config(
    demo: DemoSettings, dataset: str, data: DemoData, training: dict[str, Any]
) -> TrainConfig:
    """The demo's training run: a small ViT from scratch on ``data``, saved to ``OUT/run``;
    ``training`` holds the options shared with ``vitkit train`` (epochs, balance, seed, ...)."""
    return TrainConfig(
        data=str(data.root),
        out=str(Path(demo.out) / "run"),
        from_scratch=True,
        preset=demo_preset(dataset),
        model_overrides=dict(DEMO_MODEL),
        augment="none",  # flips would turn a 6 into a 9; and a short run gains little from crops
        log_every=5,
        **{**DEMO_TRAINING, **training},
    )
