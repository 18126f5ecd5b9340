"""Decoding as a stage of its own: CPU tasks turn images into model-sized uint8 pixels, so that
GPU workers only normalise and run the model.

Inside one worker, decoding and the forward pass take turns: a GPU waits while its worker's
CPUs decode the next batch. As a separate Ray stage, decoding runs on every CPU of the cluster
at once and streams into the GPU workers, which never wait for a JPEG. The price is that the
pixels travel through the object store: 150 KB per image at 224x224 (uint8, 3 channels),
against a few KB for a path; Ray Data's backpressure bounds how many are in flight.

The pixels are exactly those the one-process path makes (the checkpoint processor's fast mode:
decode, resize, crop to uint8, then ``ImageProcessor.normalize``), so the numbers do not change.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from vitkit.errors import VitkitError
from vitkit.images.processor import ImageProcessor

PIXELS = "pixels"  # (B, 3, H, W) uint8, the column the decode stage adds
ERROR = "error"


def can_split(processor: ImageProcessor, mode: str | None) -> bool:
    """Decoding can run apart when the fast mode makes images of one fixed size."""
    if (mode or processor.mode) != "fast":
        return False
    try:
        processor.size  # noqa: B018  (raises for sizes that follow each image's aspect ratio)
    except VitkitError:
        return False
    return True


def decode_images(
    batch: dict[str, Any], *, processor: ImageProcessor, image_column: str, threads: int = 1
) -> dict[str, Any]:
    """Ray task: the image column -> ``pixels`` (zeros where an image failed) and ``error``
    ("" where it did not); the other columns pass through (not bytes: their job is done)."""
    images = list(batch[image_column])
    height, width = processor.size
    pixels = np.zeros((len(images), 3, height, width), dtype=np.uint8)
    errors = [""] * len(images)  # "" rather than None: Ray keeps an all-"" column as strings

    def decode(index: int) -> None:
        try:
            pixels[index] = processor.prepare_uint8(images[index]).numpy()
        except VitkitError as error:
            errors[index] = str(error)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        list(pool.map(decode, range(len(images))))
    kept = {k: v for k, v in batch.items() if k != image_column or _is_text(v)}
    return {**kept, PIXELS: pixels, ERROR: np.array(errors, dtype=object)}


def decoded_batch(
    columns: dict[str, Any], processor: ImageProcessor, device: torch.device
) -> tuple[torch.Tensor, list[int], dict[int, str]]:
    """A decoded batch -> (normalised float pixels on ``device``, rows that decoded, errors)."""
    errors = {i: e for i, e in enumerate(columns[ERROR]) if isinstance(e, str) and e}
    indices = [i for i in range(len(columns[ERROR])) if i not in errors]
    uint8 = torch.from_numpy(np.asarray(columns[PIXELS])[indices])  # a copy: fancy indexing
    return processor.normalize(uint8.to(device)), indices, errors


def _is_text(values: Any) -> bool:
    return len(values) > 0 and isinstance(values[0], str)
