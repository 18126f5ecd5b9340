"""The tiles of one slide that hold tissue: a grid over the chosen level, filtered by the mask.

The grid starts at the level's top-left corner and steps by the stride until it covers the
whole level; the last row and column may run past the edge (the reader pads them with white),
so tissue at the border is never dropped. Only tiles whose tissue fraction reaches
``min_tissue`` are kept, in raster order (row by row), which is also the order in which they
are read, run and written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vitkit.errors import NoTissueError
from vitkit.slides.geometry import TileGeometry
from vitkit.slides.readers.base import SlideReader
from vitkit.slides.tissue import Thumbnail, tissue_fractions, tissue_mask


@dataclass
class SlidePlan:
    """What will run on one slide: tiles (level coordinates, raster order) and the thumbnail."""

    geometry: TileGeometry
    x: np.ndarray  # (N,) int64, left edge of each tile in pixels of geometry.level
    y: np.ndarray  # (N,) int64, top edge
    tissue: np.ndarray  # (N,) float32, share of the tile on tissue
    grid_shape: tuple[int, int]  # (rows, columns) of the full grid, tissue or not
    thumbnail: Thumbnail
    mask: np.ndarray  # (h, w) bool, tissue on the thumbnail
    level_size: tuple[int, int]  # (width, height) of geometry.level
    level0_size: tuple[int, int]  # (width, height) of level 0

    def __len__(self) -> int:
        return len(self.x)

    def level0_xy(self) -> tuple[np.ndarray, np.ndarray]:
        """Tile corners in level-0 pixels (the coordinates of every output)."""
        scale = self.geometry.downsample
        return np.round(self.x * scale).astype(np.int64), np.round(self.y * scale).astype(np.int64)

    def grid_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(row, column) of each tile in the full grid."""
        stride = self.geometry.read_stride
        return self.y // stride, self.x // stride


def grid_positions(length: int, size: int, stride: int) -> np.ndarray:
    """Tile starts along one axis: 0, stride, ... until a tile reaches ``length``."""
    count = max(1, math.ceil((length - size) / stride) + 1)
    return np.arange(count, dtype=np.int64) * stride


def plan_tiles(
    reader: SlideReader, geometry: TileGeometry, thumbnail: Thumbnail, min_tissue: float
) -> SlidePlan:
    """The grid's tiles with at least ``min_tissue`` of their area on tissue (raises if none)."""
    level = reader.levels[geometry.level]
    columns = grid_positions(level.width, geometry.read_size, geometry.read_stride)
    rows = grid_positions(level.height, geometry.read_size, geometry.read_stride)
    y, x = (axis.reshape(-1) for axis in np.meshgrid(rows, columns, indexing="ij"))
    mask = tissue_mask(thumbnail.pixels)
    scale = geometry.downsample
    fractions = tissue_fractions(
        mask, thumbnail.level0_per_pixel, x * scale, y * scale, geometry.level0_size
    )
    keep = fractions >= min_tissue if min_tissue > 0 else np.ones_like(fractions, dtype=bool)
    if not keep.any():
        raise NoTissueError(
            f"{reader.path}: no tissue found: none of its {len(x):,} tiles has >= "
            f"{min_tissue:.0%} tissue ({mask.mean():.2%} of the thumbnail looks like tissue); "
            "lower --min-tissue (0 runs every tile) if the slide is faint"
        )
    first = reader.levels[0]
    return SlidePlan(
        geometry=geometry,
        x=x[keep],
        y=y[keep],
        tissue=fractions[keep],
        grid_shape=(len(rows), len(columns)),
        thumbnail=thumbnail,
        mask=mask,
        level_size=(level.width, level.height),
        level0_size=(first.width, first.height),
    )
