"""``ModelSpec``: what the trainer needs to know about a network besides its parameters.

A leaf module (it imports only the settings), so that the data, the tasks and the network
builders (``vitkit.training.specs``) can all name the type without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from vitkit.training.config import TrainConfig


@dataclass
class ModelSpec:
    """What the trainer needs to know about a network besides its parameters."""

    model: nn.Module
    image_size: tuple[int, int]  # training resolution (height, width)
    mean: tuple[float, ...]  # the normalisation the model expects (training augmentations use it)
    std: tuple[float, ...]
    eval_transform: Callable[[Image.Image], torch.Tensor]  # the checkpoint's own preprocessing
    save: Callable[[nn.Module, Path], None]  # writes a directory vitkit can load again
    load: Callable[[Path], nn.Module] | None = None  # reads what ``save`` wrote (for the test pass)
    description: str = ""
    patch_size: int | None = None  # for the up-front check of --image-size (ViTs only)


# ``(cfg, id2label) -> ModelSpec``: what a task builder calls to make the network for the data.
ModelFactory = Callable[[TrainConfig, dict[int, str]], ModelSpec]
