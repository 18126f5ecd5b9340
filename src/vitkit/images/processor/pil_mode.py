"""The "pil" mode: transformers' ``ViTImageProcessorPil`` (``PilBackend``), step for step.

Per image: PIL resize of the uint8 RGB image -> numpy HWC uint8 -> center crop (if configured) ->
rescale (``uint8 -> float64 * factor -> float32``) -> normalize (``(x - mean) / std`` in float32,
mean/std cast to float32) -> CHW. Each float operation is the reference's own, in its order and
dtype, so the results are bit-identical, not merely close.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from vitkit.images.processor.sizes import SizeSpec


def resize(image: Image.Image, size: SizeSpec, resample: int) -> np.ndarray:
    """PIL resize (``Image.resize(..., reducing_gap=None)``, as the reference) -> HWC uint8."""
    height, width = size.output_hw(image.height, image.width)
    # The reference calls Image.resize even when the size already matches (PIL then copies).
    return np.asarray(image.resize((width, height), resample=resample, reducing_gap=None))


def center_crop(image: np.ndarray, crop_height: int, crop_width: int) -> np.ndarray:
    """transformers.image_transforms.center_crop on HWC: zero-pads when the image is smaller."""
    height, width = image.shape[:2]
    top = (height - crop_height) // 2
    left = (width - crop_width) // 2
    if top >= 0 and left >= 0:
        return image[top : top + crop_height, left : left + crop_width]
    new_height, new_width = max(crop_height, height), max(crop_width, width)
    padded = np.zeros((new_height, new_width, *image.shape[2:]), dtype=image.dtype)
    top_pad = math.ceil((new_height - height) / 2)
    left_pad = math.ceil((new_width - width) / 2)
    padded[top_pad : top_pad + height, left_pad : left_pad + width] = image
    top, left = top + top_pad, left + left_pad
    return padded[
        max(0, top) : min(new_height, top + crop_height),
        max(0, left) : min(new_width, left + crop_width),
    ]


def rescale_normalize(
    pixels: np.ndarray,
    *,
    do_rescale: bool,
    rescale_factor: float,
    do_normalize: bool,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> np.ndarray:
    """HWC uint8 -> CHW float32 with the reference's exact arithmetic."""
    values: np.ndarray = pixels
    if do_rescale:
        values = (values.astype(np.float64) * rescale_factor).astype(np.float32)
    if do_normalize:
        if not np.issubdtype(values.dtype, np.floating):
            values = values.astype(np.float32)
        values = (values - np.array(mean, dtype=values.dtype)) / np.array(std, dtype=values.dtype)
    return np.ascontiguousarray(values.transpose(2, 0, 1), dtype=np.float32)
