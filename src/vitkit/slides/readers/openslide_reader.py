"""Vendor slides (SVS, NDPI, MRXS, SCN, BIF, ...) and tiled TIFF through OpenSlide.

openslide-python calls the C library through ctypes, which releases the GIL, and OpenSlide is
safe to read from several threads at once, so the streaming runner's workers read in parallel.
OpenSlide's ``read_region`` takes level-0 coordinates and returns RGBA with transparent pixels
outside the scanned area; they are laid on white here, as glass looks.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vitkit.errors import SlideFormatError, SlideReadError
from vitkit.slides.readers.base import Level, SlideReader

# Decoded tiles OpenSlide keeps per slide. Its default (32 MiB) holds less than one row of
# 256-px RGBA tiles across a 40,000-px slide (40 MB), so each row of regions would decode the
# tiles it shares with the row above again; 96 MiB holds two rows.
DEFAULT_CACHE_BYTES = 96 << 20


class OpenSlideReader(SlideReader):
    name = "openslide"

    def __init__(self, path: Path, *, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        openslide = import_openslide(path)
        try:
            self._slide = openslide.OpenSlide(str(path))
        except openslide.OpenSlideUnsupportedFormatError:
            raise SlideFormatError(f"{path}: not a slide format OpenSlide reads") from None
        except openslide.OpenSlideError as error:
            raise SlideReadError(f"{path}: OpenSlide cannot open it ({error})") from None
        self._slide.set_cache(openslide.OpenSlideCache(cache_bytes))
        self._error = openslide.OpenSlideError
        levels = [
            Level(width, height, float(downsample))
            for (width, height), downsample in zip(
                self._slide.level_dimensions, self._slide.level_downsamples, strict=True
            )
        ]
        properties = self._slide.properties
        vendor = str(properties.get("openslide.vendor", "unknown"))
        super().__init__(path, levels, _mpp(properties), vendor)

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        downsample = self.levels[level].downsample
        location = (round(x * downsample), round(y * downsample))
        try:
            region = self._slide.read_region(location, level, (width, height))
        except self._error as error:
            raise SlideReadError(
                f"{self.path}: cannot read level {level} at ({x}, {y}): {error} "
                "(a truncated or corrupt slide)"
            ) from None
        return on_white(np.asarray(region))

    def close(self) -> None:
        if getattr(self, "_slide", None) is not None:
            self._slide.close()


def import_openslide(path: Path) -> Any:
    try:
        import openslide  # optional dependency (the `slides` extra)
    except ImportError as error:  # also raised when the OpenSlide library itself is missing
        raise SlideFormatError(
            f"{path}: reading it needs OpenSlide: pip install 'vitkit[slides]' "
            f"(openslide-python and openslide-bin) [{error}]"
        ) from None
    return openslide


def detect_format(path: Path) -> str | None:
    """OpenSlide's name for the file's format, or None (also when OpenSlide is not installed)."""
    try:
        import openslide
    except ImportError:
        return None
    vendor = openslide.OpenSlide.detect_format(str(path))
    return None if vendor is None else str(vendor)


def on_white(rgba: np.ndarray) -> np.ndarray:
    """(h, w, 4) RGBA (not premultiplied) -> (h, w, 3) RGB composited onto white."""
    rgb = rgba[:, :, :3]
    alpha = rgba[:, :, 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    weight = alpha[:, :, None].astype(np.uint16)
    blended = (rgb * weight + 255 * (255 - weight) + 127) // 255
    return blended.astype(np.uint8)


def _mpp(properties: Mapping[str, str]) -> float | None:
    values = []
    for key in ("openslide.mpp-x", "openslide.mpp-y"):
        value = properties.get(key)
        if value:
            values.append(float(value))
    return sum(values) / len(values) if values else None
