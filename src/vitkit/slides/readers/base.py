"""What every slide reader offers: levels, microns per pixel, and RGB regions read on demand.

A reader never loads a whole level of a pyramidal slide: ``read`` decodes only the stored tiles
(or strips) a region touches, so memory stays bounded whatever the slide's size. ``read`` may be
called from several threads at once (the streaming runner's workers do).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

WHITE = 255  # outside a level, a region is glass: white, as OpenSlide's transparent pixels on white


@dataclass(frozen=True)
class Level:
    """One resolution of a slide: its size in pixels and level-0 pixels per pixel of it."""

    width: int
    height: int
    downsample: float


class SlideReader(ABC):
    """A slide opened for reading. Subclasses fill ``levels`` and ``mpp`` and implement ``read``."""

    name: str  # "tifffile", "openslide", "pillow"

    def __init__(self, path: Path, levels: list[Level], mpp: float | None, vendor: str) -> None:
        self.path = path
        self.levels = tuple(levels)
        self.mpp = mpp  # microns per level-0 pixel (None: the file does not say)
        self.vendor = vendor  # the format as the reader names it ("aperio", "generic-tiff", "PNG")

    @abstractmethod
    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """(height, width, 3) uint8 RGB at level coordinates (x, y); white outside the level."""

    def close(self) -> None:  # noqa: B027  (optional for subclasses: most hold only a file)
        """Release files and caches."""

    def level_mpp(self, level: int) -> float | None:
        return None if self.mpp is None else self.mpp * self.levels[level].downsample

    def describe_levels(self) -> str:
        """'0: 40000x30000 (0.25 µm/px), 1: ...' for error messages."""
        parts = []
        for index, level in enumerate(self.levels):
            mpp = self.level_mpp(index)
            scale = f" ({mpp:.4g} µm/px)" if mpp is not None else ""
            parts.append(f"{index}: {level.width}x{level.height}{scale}")
        return ", ".join(parts)

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def overlap(start: int, size: int, limit: int) -> tuple[int, int]:
    """The part [lo, hi) of [start, start + size) inside [0, limit); lo >= hi when none."""
    return max(start, 0), min(start + size, limit)


def white_canvas(width: int, height: int) -> np.ndarray:
    return np.full((height, width, 3), WHITE, dtype=np.uint8)


def as_rgb(pixels: np.ndarray) -> np.ndarray:
    """(h, w), (h, w, 1), (h, w, 3) or (h, w, 4) uint8 -> (h, w, 3): grey repeated, alpha dropped
    (as transformers' ``load_image`` and ``vitkit.images.decode`` treat an image's alpha)."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.shape[2] == 1:
        return np.repeat(pixels, 3, axis=2)
    return pixels[:, :, :3]
