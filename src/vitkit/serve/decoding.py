"""The decode threads' work: uploaded bytes -> model input, within the shared pixel budget.

Each image is opened (header only) first: its pixel count decides what it holds of the
``PixelBudget`` while it decodes. A JPEG over the service's pixel cap is decoded at the DCT scale
that fits (``vitkit.images.decode``, ``reduce_oversized``): it holds the reduced pixels only, and
its answer carries ``decoded_scale``. Everything else above the cap is refused before decoding.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from PIL import Image

from vitkit.images.decode import decoded_scale, load_image, open_checked
from vitkit.images.processor import ImageProcessor
from vitkit.serve.explain import display_copy
from vitkit.serve.limits import PixelBudget
from vitkit.serve.uploads import Upload


class Encoded(Protocol):
    """An encoded image: an upload, or one element of a v2 BYTES tensor."""

    @property
    def name(self) -> str: ...

    def read(self) -> bytes: ...


@dataclass
class Decoded:
    """A request's model input and, per image, the scale it was decoded at (1.0: full size)."""

    pixels: torch.Tensor
    scales: list[float]


def decode_uploads(
    processor: ImageProcessor,
    mode: str | None,
    uploads: Sequence[Encoded],
    budget: PixelBudget,
    deadline: float,
) -> Decoded:
    """Bytes -> the checkpoint's preprocessing, one image at a time within the pixel budget.

    The processor reads full-scale images itself, so its fast decoding (RGBX JPEG,
    ``--jpeg-draft``) applies, with the service's pixel cap (``ModelRunner.upload_processor``).
    """
    prepared, scales = [], []
    for upload in uploads:
        data = upload.read()
        pixels, scale = header_pixels(data, upload.name, processor.max_pixels)
        with budget.hold(pixels, deadline):
            if scale < 1:
                image = reduced_image(data, upload.name, processor.max_pixels)
                prepared.append(processor([image], mode))
            else:
                prepared.append(processor([named_stream(data, upload.name)], mode))
        scales.append(scale)
    pixels_out = torch.cat(prepared) if len(prepared) > 1 else prepared[0]
    return Decoded(pixels_out, scales)


def decode_for_display(
    prepare: Any, upload: Upload, max_pixels: int, budget: PixelBudget, deadline: float
) -> tuple[Image.Image, torch.Tensor, float]:
    """(a display-sized copy of the image, its model input, its decoded scale): /v1/explain's
    decode step. ``prepare``: the classifier's PIL image -> model input."""
    data = upload.read()
    pixels, scale = header_pixels(data, upload.name, max_pixels)
    with budget.hold(pixels, deadline):
        image = reduced_image(data, upload.name, max_pixels)
        return display_copy(image), prepare([image]), scale


def header_pixels(data: bytes, name: str, max_pixels: int | None) -> tuple[int, float]:
    """(pixels the decode will make, its scale) from the header alone; refuses what the cap
    refuses even at the smallest scale."""
    with open_checked(data, name, max_pixels=max_pixels, reduce_oversized=True) as header:
        width, height = header.size
        return int(width * height), decoded_scale(header)


def reduced_image(data: bytes, name: str, max_pixels: int | None) -> Image.Image:
    """The image as an RGB PIL image, at the scale that fits the cap."""
    return load_image(named_stream(data, name), max_pixels=max_pixels, reduce_oversized=True)


def named_stream(data: bytes, name: str) -> io.BytesIO:
    stream = io.BytesIO(data)
    stream.name = name  # errors name the upload, not "<BytesIO>"
    return stream
