"""Joint augmentation of an image and its mask (torchvision v2, the mask a ``tv_tensors.Mask``).

Every geometric transform moves the image and the mask together (the mask resized and rotated
with nearest-neighbour, so classes never blend); colour jitter touches the image only; pixels a
transform brings in from outside the image are "not labelled" (255) in the mask. Presets, as
``--augment`` names them for classification (``vitkit.training.augment``):

- ``none``: Resize(S, S).
- ``seed``: Resize, horizontal and vertical flips, quarter turns, RandomResizedCrop(scale 0.5-1)
  half of the time, colour jitter: for images whose orientation means nothing (histology).
- ``natural``: RandomResizedCrop(scale 0.25-1), horizontal flip, colour jitter: photos.
- ``shift``: Resize, then RandomAffine (10 degrees, 12.5% shifts, 0.9-1.1 scale).

Evaluation uses the checkpoint's preprocessing (``DenseProcessor``), the mask brought to the same
grid (``DenseProcessor.prepare_mask``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from vitkit.images.masks import IGNORE_INDEX
from vitkit.images.processor.dense import DenseProcessor
from vitkit.training.augment import RandomRotate90
from vitkit.training.config import AUGMENT_PRESETS

_MASK_FILL = {tv_tensors.Mask: IGNORE_INDEX, "others": 0}


def _jitter() -> v2.Transform:
    return v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02)


def _geometry(preset: str, height: int, width: int) -> list[v2.Transform]:
    resize = v2.Resize((height, width), antialias=True)
    if preset == "none":
        return [resize]
    if preset == "seed":
        crop = v2.RandomResizedCrop((height, width), scale=(0.5, 1.0), antialias=True)
        return [
            resize,
            v2.RandomHorizontalFlip(0.5),
            v2.RandomVerticalFlip(0.5),
            RandomRotate90(0.5),
            v2.RandomApply([crop], p=0.5),
            _jitter(),
        ]
    if preset == "natural":
        crop = v2.RandomResizedCrop((height, width), scale=(0.25, 1.0), antialias=True)
        return [crop, v2.RandomHorizontalFlip(0.5), _jitter()]
    if preset == "shift":
        affine = v2.RandomAffine(
            degrees=10.0, translate=(0.125, 0.125), scale=(0.9, 1.1), fill=_MASK_FILL
        )
        return [resize, affine]
    raise ValueError(f"unknown augmentation preset {preset!r}: choose one of {AUGMENT_PRESETS}")


class JointTrainTransform:
    """(HWC uint8 image, HW uint8 mask) -> (normalised (3, S, S) float32, (S, S) uint8 mask):
    masks stay uint8 (the loss takes them as int64), an eighth of the memory evaluation keeps."""

    def __init__(
        self,
        preset: str,
        size: tuple[int, int],
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
    ) -> None:
        height, width = size
        self.pipeline = v2.Compose(
            [
                *_geometry(preset, height, width),
                v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
                v2.Normalize(list(mean), list(std)),
            ]
        )

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
        labels = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask)))
        pixels, labels = self.pipeline(pixels, labels)
        return pixels.as_subclass(torch.Tensor), labels.as_subclass(torch.Tensor)


class JointEvalTransform:
    """The checkpoint's preprocessing for the image, the mask brought to the same grid."""

    def __init__(self, processor: DenseProcessor) -> None:
        self.processor = processor

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        uint8 = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        pixels = self.processor.prepare_uint8(uint8)
        labels = self.processor.prepare_mask(torch.from_numpy(np.ascontiguousarray(mask)))
        return pixels, labels
