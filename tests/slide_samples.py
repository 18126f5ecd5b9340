"""Small whole-slide images for tests/test_slides*.py, written at test time with tifffile.

A mosaic of real pictures on white glass: scikit-image's immunohistochemistry sample (real
histology), the cat photo and a corner of the coffee photo cut by the slide's right and bottom
edges, so tissue reaches the border. 1300 x 1000 pixels (no multiple of the 64-pixel tiles),
three levels (each half the one above, 2x2 means), 0.25 µm/px at level 0. The arrays are kept,
so tests compare what the readers return with the pixels the slide was made from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from skimage import data

WIDTH, HEIGHT = 1300, 1000
MPP = 0.25
STORE_TILE = 128  # the TIFF's own tiles (not the model's)


@dataclass(frozen=True)
class Placed:
    name: str
    x: int
    y: int
    width: int
    height: int

    def contains(self, x: int, y: int, size: int) -> bool:
        return (
            self.x <= x
            and self.y <= y
            and x + size <= self.x + self.width
            and y + size <= self.y + self.height
        )

    def touches(self, x: int, y: int, size: int) -> bool:
        return (
            x < self.x + self.width
            and self.x < x + size
            and y < self.y + self.height
            and self.y < y + size
        )


def mosaic() -> tuple[np.ndarray, list[Placed]]:
    """The level-0 pixels and where each picture lies."""
    canvas = np.full((HEIGHT, WIDTH, 3), 255, dtype=np.uint8)
    pictures = [
        ("histology", data.immunohistochemistry(), 90, 70),
        ("chelsea", data.chelsea(), 700, 520),
        ("coffee", data.coffee(), 1060, 840),
    ]
    placed = []
    for name, pixels, x, y in pictures:
        height, width = min(pixels.shape[0], HEIGHT - y), min(pixels.shape[1], WIDTH - x)
        canvas[y : y + height, x : x + width] = pixels[:height, :width]
        placed.append(Placed(name, x, y, width, height))
    return canvas, placed


def pyramid(level0: np.ndarray, levels: int = 3) -> list[np.ndarray]:
    """Each level the 2x2 mean of the one above (PIL's reduce)."""
    result = [level0]
    for _ in range(levels - 1):
        result.append(np.asarray(Image.fromarray(result[-1]).reduce(2)))
    return result


def write_tiff(path: Path, levels: list[np.ndarray], *, mpp: float | None = MPP) -> Path:
    """Pyramidal tiled TIFF, deflate, one page per level; mpp as a centimetre resolution."""
    with tifffile.TiffWriter(path) as tiff:
        for index, pixels in enumerate(levels):
            extra = {}
            if mpp is not None:
                per_cm = 1e4 / (mpp * 2**index)
                extra = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
            tiff.write(
                pixels,
                tile=(STORE_TILE, STORE_TILE),
                compression="zlib",
                photometric="rgb",
                subfiletype=1 if index else 0,
                metadata=None,
                **extra,
            )
    return path


def write_svs(path: Path, levels: list[np.ndarray], *, mpp: float = MPP) -> Path:
    """The same pyramid as an Aperio SVS (its description carries the mpp): OpenSlide's."""
    with tifffile.TiffWriter(path) as tiff:
        for index, pixels in enumerate(levels):
            description = (
                f"Aperio Image Library v12.0.0\n{pixels.shape[1]}x{pixels.shape[0]} "
                f"[0,0 {pixels.shape[1]}x{pixels.shape[0]}] (256x256) |AppMag = 40"
                f"|MPP = {mpp * 2**index}"
            )
            tiff.write(
                pixels,
                tile=(STORE_TILE, STORE_TILE),
                compression="zlib",
                photometric="rgb",
                description=description,
                subfiletype=1 if index else 0,
                metadata=None,
            )
    return path


def crop(pixels: np.ndarray, x: int, y: int, size: int) -> np.ndarray:
    """A square region, white where it runs past the edge (as the slide readers do)."""
    out = np.full((size, size, 3), 255, dtype=np.uint8)
    part = pixels[y : y + size, x : x + size]
    out[: part.shape[0], : part.shape[1]] = part
    return out
