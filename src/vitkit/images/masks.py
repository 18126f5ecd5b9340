"""Segmentation masks as files and pictures: read, validate, write with a palette, overlay, areas.

A mask is a single-channel image of class indices, one per pixel, 255 meaning "not labelled"
(no loss, no metric counts it). vitkit writes masks as palette PNGs: the stored values are the
class indices themselves (any program reads them back as such), and image viewers show each
class in its palette colour.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vitkit.atomic_files import atomic_write_bytes
from vitkit.errors import DatasetError

IGNORE_INDEX = 255
# Distinct colours for classes 0, 1, 2, ... (Kelly's and ColorBrewer's qualitative sets); the
# ignore index is black.
_BASE_COLOURS = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
)  # fmt: skip


def palette(num_classes: int = 256) -> list[tuple[int, int, int]]:
    """An RGB colour per class index 0..255: the qualitative set, then seeded colours."""
    return list(_palette()[: max(num_classes, 256)])


@functools.cache
def _palette() -> tuple[tuple[int, int, int], ...]:
    rng = np.random.default_rng(0)
    colours = list(_BASE_COLOURS)
    while len(colours) < 256:
        colours.append(tuple(int(v) for v in rng.integers(40, 256, 3)))  # type: ignore[arg-type]
    colours[IGNORE_INDEX] = (0, 0, 0)
    return tuple(colours)


@functools.cache
def _palette_array() -> np.ndarray:
    return np.asarray(_palette(), dtype=np.float32)


def palette_bytes() -> list[int]:
    """PIL's flat palette list (768 values)."""
    return [value for colour in _palette() for value in colour]


def mask_image(mask: np.ndarray) -> Image.Image:
    """A palette ("P") image holding the class indices of ``mask`` (H, W)."""
    if mask.ndim != 2:
        raise ValueError(f"a mask is (height, width), got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError("mask values must be class indices in 0..255")
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette(palette_bytes())
    return image


def mask_png_bytes(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    mask_image(mask).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def write_mask(mask: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write ``mask`` as a palette PNG, atomically."""
    target = Path(path)
    atomic_write_bytes(target, mask_png_bytes(mask))
    return target


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """(H, W) uint8 class indices from a mask file; DatasetError naming the file otherwise.

    Palette ("P") and greyscale ("L", "I;16", "I") images are read as their stored values (a
    palette PNG's indices, not its colours). An RGB image is refused: colours are not classes.
    """
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            values = np.array(image)  # a writable copy
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path}: not a readable mask image ({error})") from None
    if mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LA", "PA"):
        raise DatasetError(
            f"{path}: a {mode} image, not a mask: save masks as single-channel PNGs of class "
            "indices (mode L or P; 255 = not labelled)"
        )
    if values.ndim != 2:
        raise DatasetError(f"{path}: a mask has one channel, this image has shape {values.shape}")
    if values.dtype != np.uint8:
        if values.size and (values.min() < 0 or values.max() > 255):
            raise DatasetError(
                f"{path}: mask values {int(values.min())}..{int(values.max())} are not class "
                "indices 0..254 (255 = not labelled)"
            )
        values = values.astype(np.uint8)
    return values


def check_mask(
    mask: np.ndarray, num_classes: int, path: str | os.PathLike[str], image_hw: tuple[int, int]
) -> None:
    """DatasetError naming ``path`` unless ``mask`` fits its image's size and the class list."""
    if tuple(mask.shape) != tuple(image_hw):
        raise DatasetError(
            f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
            f"{image_hw[1]}x{image_hw[0]}: a mask must have its image's size"
        )
    present = np.unique(mask)
    bad = [int(v) for v in present if v >= num_classes and v != IGNORE_INDEX]
    if bad:
        raise DatasetError(
            f"{path}: mask values {bad[:10]} are not classes of the label list (0..{num_classes - 1}"
            f", {IGNORE_INDEX} = not labelled): fix the mask or add the classes to labels.json"
        )


def overlay(
    image: Image.Image | np.ndarray,
    mask: np.ndarray,
    labels: Sequence[str] | None = None,
    *,
    alpha: float = 0.5,
    legend: bool = True,
) -> Image.Image:
    """The image with each class painted over it in its palette colour (unlabelled pixels left
    as they are), and a legend of the classes present when ``labels`` are given."""
    base = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if base.shape[:2] != mask.shape:
        raise ValueError(f"image {base.shape[:2]} and mask {mask.shape} differ in size")
    colours = _palette_array()[mask]
    blended = base.astype(np.float32) * (1 - alpha) + colours * alpha
    painted = np.where((mask == IGNORE_INDEX)[..., None], base, blended.round())
    picture = Image.fromarray(painted.astype(np.uint8), mode="RGB")
    if legend and labels:
        present = [int(v) for v in np.unique(mask) if v != IGNORE_INDEX and v < len(labels)]
        picture = _with_legend(picture, [(labels[i], _palette()[i]) for i in present])
    return picture


def _with_legend(
    picture: Image.Image, entries: list[tuple[str, tuple[int, int, int]]]
) -> Image.Image:
    """``picture`` with a strip below it naming each colour."""
    if not entries:
        return picture
    font = ImageFont.load_default()
    row = 14
    width = max(picture.width, 24 + max(int(font.getlength(name)) for name, _ in entries))
    legend_height = row * len(entries) + 6
    canvas = Image.new("RGB", (width, picture.height + legend_height), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for index, (name, colour) in enumerate(entries):
        top = picture.height + 3 + index * row
        draw.rectangle((4, top + 1, 14, top + 11), fill=colour, outline=(0, 0, 0))
        draw.text((20, top), name, fill=(0, 0, 0), font=font)
    return canvas


def class_areas(
    mask: np.ndarray, labels: Sequence[str], pixel_area_um2: float | None = None
) -> list[dict[str, Any]]:
    """Per class: pixels, fraction of the labelled pixels, and µm² when the pixel area is known."""
    counts = np.bincount(mask.ravel(), minlength=256)[: len(labels)]
    total = int(counts.sum())
    rows = []
    for index, label in enumerate(labels):
        row: dict[str, Any] = {
            "class": index,
            "label": label,
            "pixels": int(counts[index]),
            "fraction": float(counts[index] / total) if total else 0.0,
        }
        if pixel_area_um2 is not None:
            row["area_um2"] = float(counts[index] * pixel_area_um2)
        rows.append(row)
    return rows
