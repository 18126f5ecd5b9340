"""Real photos to time and check models on (scikit-image's and scikit-learn's bundled
images), as arrays or as a normalised batch at a model's input size."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


# ---- inputs -----------------------------------------------------------------------------------
def real_photos() -> list[Any]:
    """The real RGB photos bundled with scikit-image and scikit-learn (uint8 HWC arrays)."""
    photos: list[Any] = []
    try:
        from skimage import data

        for name in ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "retina"):
            photos.append(np.ascontiguousarray(getattr(data, name)()[..., :3]))
    except (ImportError, AttributeError, OSError):
        pass
    try:
        from sklearn.datasets import load_sample_images

        photos.extend(load_sample_images().images)
    except ImportError:
        pass
    if not photos:
        raise ModuleNotFoundError("no sample photos: needs scikit-image", name="skimage")
    return photos


def photo_batch(batch_size: int, image_hw: tuple[int, int]) -> torch.Tensor:
    """``batch_size`` real photos resized to ``image_hw``, normalised as ViT expects (mean/std 0.5)."""
    photos = real_photos()
    tensors = []
    for index in range(batch_size):
        image = torch.tensor(photos[index % len(photos)]).permute(2, 0, 1)[None].float()
        tensors.append(F.interpolate(image, size=image_hw, mode="bilinear", antialias=True))
    return (torch.cat(tensors) / 255 - 0.5) / 0.5
