"""Where the tissue is, decided on a thumbnail, so glass is never read at full resolution.

Glass is bright and colourless; stained tissue is coloured (H&E, DAB) or at least darker than
the glass (pale stroma, haematoxylin-only areas). Each thumbnail pixel gets a "stain" value:
its HSV saturation or how much darker it is than the glass (the 95th percentile of brightness),
whichever is larger. The threshold is Otsu's on that value, kept within
[``MIN_THRESHOLD``, ``MAX_THRESHOLD``]: below, on a slide without tissue Otsu would split the
scanner's noise in two; above, on a slide with a pale and a dark stain Otsu splits the two
stains and would call the pale tissue glass (scikit-image's immunohistochemistry sample: 62% of
it found by Otsu alone, 93% with the cap). Pixels too dark to be stain (black borders,
shadows) count as background.

The thumbnail is made from the coarsest level that still has about ``max_side`` pixels on its
long side, read in bands and averaged down block by block, so even a slide with a single
100,000-pixel level is summarised in bounded memory (block means also smooth away the noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vitkit.slides.readers.base import SlideReader
from vitkit.slides.settings import DEFAULT_THUMBNAIL_SIDE

MIN_THRESHOLD = 0.06  # glass: saturation and brightness noise stay below ~0.05 on a thumbnail
MAX_THRESHOLD = 0.10  # pale stroma: 0.07-0.2; H&E and DAB: 0.15-0.6
MIN_BRIGHTNESS = 30  # darker pixels: black borders and shadows, not tissue
GLASS_QUANTILE = 0.95
_BAND_BYTES = 16 << 20


@dataclass
class Thumbnail:
    """A small RGB picture of the whole slide and how its pixels map to level 0."""

    pixels: np.ndarray  # (h, w, 3) uint8
    level0_per_pixel: tuple[float, float]  # level-0 pixels per thumbnail pixel (x, y)


def make_thumbnail(reader: SlideReader, max_side: int = DEFAULT_THUMBNAIL_SIDE) -> Thumbnail:
    """The slide at about ``max_side`` pixels: a level read whole, or block means of a larger one."""
    level = _thumbnail_level(reader, max_side)
    size = reader.levels[level]
    factor = max(1, math.ceil(max(size.width, size.height) / max_side))  # 1 if it fits
    out_w, out_h = math.ceil(size.width / factor), math.ceil(size.height / factor)
    rows_per_band = max(1, _BAND_BYTES // (3 * size.width * factor)) if factor > 1 else out_h
    bands = []
    for top in range(0, out_h, rows_per_band):
        rows = min(rows_per_band, out_h - top)
        band = reader.read(level, 0, top * factor, out_w * factor, rows * factor)
        bands.append(_block_mean(band, factor))
    scale = size.downsample * factor
    return Thumbnail(np.concatenate(bands), (scale, scale))


def _thumbnail_level(reader: SlideReader, max_side: int) -> int:
    """The coarsest level with a long side of at least half ``max_side`` (a pyramid's levels are
    2-4x apart, so one usually lies between half and all of it: read whole, not averaged)."""
    big_enough = [
        i
        for i, level in enumerate(reader.levels)
        if max(level.width, level.height) >= max_side // 2
    ]
    return max(big_enough) if big_enough else 0


def _block_mean(pixels: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return pixels
    height, width = pixels.shape[0] // factor, pixels.shape[1] // factor
    blocks = pixels.reshape(height, factor, width, factor, 3)
    sums = blocks.sum(axis=(1, 3), dtype=np.uint32)  # no uint32 copy of the band
    return ((sums + factor * factor // 2) // (factor * factor)).astype(np.uint8)


def stain(pixels: np.ndarray) -> np.ndarray:
    """Per pixel of (h, w, 3) uint8, in [0, 1]: the larger of the HSV saturation and how much
    darker than the glass the pixel is; 0 where it is too dark to judge."""
    brightest = pixels.max(axis=2).astype(np.float32)
    spread = brightest - pixels.min(axis=2)
    saturation = np.divide(spread, brightest, out=np.zeros_like(brightest), where=brightest > 0)
    grey = pixels.mean(axis=2, dtype=np.float32) / 255
    darker = float(np.quantile(grey, GLASS_QUANTILE)) - grey
    result = np.maximum(saturation, darker)
    result[brightest < MIN_BRIGHTNESS] = 0
    return result


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The threshold that best splits ``values`` (in [0, 1]) into two classes (Otsu, 1979)."""
    counts, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * centres)
    mean_low = np.divide(sum_low, weight_low, out=np.zeros_like(sum_low), where=weight_low > 0)
    mean_high = np.divide(
        sum_low[-1] - sum_low, weight_high, out=np.zeros_like(sum_low), where=weight_high > 0
    )
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def tissue_mask(thumbnail: np.ndarray) -> np.ndarray:
    """Boolean (h, w): True on tissue."""
    values = stain(thumbnail)
    threshold = min(max(otsu_threshold(values), MIN_THRESHOLD), MAX_THRESHOLD)
    return values > threshold


def tissue_fractions(
    mask: np.ndarray,
    level0_per_pixel: tuple[float, float],
    x: np.ndarray,
    y: np.ndarray,
    size: int,
) -> np.ndarray:
    """Share of each tile (level-0 corner ``x``, ``y``, side ``size``) that the mask covers.

    The tile's box is widened to whole thumbnail pixels; the part outside the slide counts as
    glass. A summed-area table makes this one vectorised pass for any number of tiles.
    """
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    integral[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    scale_x, scale_y = level0_per_pixel
    left = np.floor(x / scale_x).astype(np.int64)
    top = np.floor(y / scale_y).astype(np.int64)
    right = np.maximum(np.ceil((x + size) / scale_x).astype(np.int64), left + 1)
    bottom = np.maximum(np.ceil((y + size) / scale_y).astype(np.int64), top + 1)
    area = (right - left) * (bottom - top)
    left, right = np.clip(left, 0, mask.shape[1]), np.clip(right, 0, mask.shape[1])
    top, bottom = np.clip(top, 0, mask.shape[0]), np.clip(bottom, 0, mask.shape[0])
    covered = integral[bottom, right] - integral[top, right] - integral[bottom, left]
    covered += integral[top, left]
    return (covered / area).astype(np.float32)
