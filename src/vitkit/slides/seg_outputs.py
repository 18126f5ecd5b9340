"""A segmentation model's slide outputs: tile masks stitched into one slide mask, its picture,
class polygons for QuPath and class areas.

The mask is drawn on the grid of one pyramid level (``--mask-level``). Each tile's class
probabilities, resized onto that grid, are blended with their overlapping neighbours' by a
window that falls from the tile's centre to its border (a Gaussian of sigma tile / 8, as the
sliding-window inference of nnU-Net and MONAI weighs overlapping predictions, where a model
sees the least context): every pixel's class is
the arg-max of the weighted mean, so a tile border draws no seam. Pixels no tile covered (no
tissue) get 255.

Memory is bounded whatever the slide's size: tiles arrive in raster order, so rows above the
current tile row are final and are written out (``BandStitcher``); only one band of tile height
is held, K classes x tile rows x mask width floats. The mask goes to ``mask.npy`` (memory-mapped,
written atomically), then:

    mask.png           palette PNG of class indices at the mask level (255 = not run)
    mask-overlay.png   the thumbnail with each class painted on it, and a legend
    classes.geojson    one polygon (with holes) per region of each class, level-0 coordinates,
                       QuPath annotations with the class's name and colour (File > Import
                       objects); traced on the mask reduced to at most POLYGON_SIDE pixels
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitkit.atomic_files import atomic_path, atomic_write_bytes, atomic_write_text
from vitkit.errors import SlideLevelError
from vitkit.images.masks import IGNORE_INDEX, mask_png_bytes, overlay, palette
from vitkit.slides.geometry import TileGeometry
from vitkit.slides.readers.base import SlideReader

POLYGON_SIDE = 4096  # longest side of the mask the polygons are traced on
MIN_REGION_PIXELS = 4  # smaller regions (on that grid) are left out of the GeoJSON
MASK_OUTPUTS = ("mask.npy", "mask.png", "mask-overlay.png", "classes.geojson")


@dataclass(frozen=True)
class MaskGeometry:
    """Where the slide mask is drawn and how a tile lands on it."""

    level: int
    downsample: float  # level-0 pixels per mask pixel
    factor: float  # pixels of the tiles' level per mask pixel
    width: int
    height: int
    tile: int  # a tile's side on the mask grid

    def place(self, x: int, y: int) -> tuple[int, int]:
        """A tile's (top, left) on the mask grid from its corner on the tiles' level."""
        return round(y / self.factor), round(x / self.factor)


def mask_geometry(reader: SlideReader, tiles: TileGeometry, level: int | None) -> MaskGeometry:
    """The mask's level: ``level``, else the first one at least 4x coarser than the tiles',
    else the coarsest; SlideLevelError for a level finer than the tiles' or not in the slide."""
    levels = reader.levels
    if level is None:
        coarser = [i for i, lv in enumerate(levels) if lv.downsample >= 4 * tiles.downsample - 1e-6]
        level = coarser[0] if coarser else len(levels) - 1
    if not 0 <= level < len(levels):
        raise SlideLevelError(f"--mask-level {level}: the slide has levels 0..{len(levels) - 1}")
    chosen = levels[level]
    if chosen.downsample < tiles.downsample - 1e-6:
        raise SlideLevelError(
            f"--mask-level {level} is finer than the tiles' level {tiles.level}: choose "
            f"{tiles.level} or a coarser one"
        )
    factor = chosen.downsample / tiles.downsample
    side = max(1, round(tiles.read_size / factor))
    return MaskGeometry(level, chosen.downsample, factor, chosen.width, chosen.height, side)


def blend_window(side: int) -> np.ndarray:
    """(side, side) float32 weights: a Gaussian of sigma side / 8 around the centre (nnU-Net's
    and MONAI's importance map), small but never 0 at the border."""
    centre, sigma = (side - 1) / 2, side / 8
    ramp = np.exp(-((np.arange(side) - centre) ** 2) / (2 * sigma**2)).astype(np.float32)
    return np.maximum(np.outer(ramp, ramp), 1e-4)


Sink = Callable[[int, np.ndarray], None]  # (first row, finished uint8 rows)


class BandStitcher:
    """Blends tile probability maps arriving in raster order into finished mask rows."""

    def __init__(self, classes: int, width: int, height: int, tile: int, sink: Sink) -> None:
        self.width, self.height, self.tile, self.sink = width, height, tile, sink
        self.window = blend_window(tile)
        self.sums = np.zeros((classes, tile, width), dtype=np.float32)
        self.weights = np.zeros((tile, width), dtype=np.float32)
        self.base = 0  # the mask row held in the band's first row

    def add(self, top: int, left: int, probabilities: np.ndarray) -> None:
        """One tile's (classes, tile, tile) probabilities at (top, left) on the mask grid."""
        if top < self.base:
            raise ValueError("tiles must arrive in raster order (rows never go back)")
        self._flush_to(min(top, self.height))
        rows = slice(max(0, -top), min(self.tile, self.height - top))
        cols = slice(max(0, -left), min(self.tile, self.width - left))
        if rows.start >= rows.stop or cols.start >= cols.stop:
            return
        band_rows = slice(top - self.base + rows.start, top - self.base + rows.stop)
        mask_cols = slice(left + cols.start, left + cols.stop)
        window = self.window[rows, cols]
        self.sums[:, band_rows, mask_cols] += probabilities[:, rows, cols] * window
        self.weights[band_rows, mask_cols] += window

    def finish(self) -> None:
        self._flush_to(self.height)

    def _flush_to(self, row: int) -> None:
        """Write rows [base, row): no later tile reaches them."""
        while self.base < row:
            count = min(row - self.base, self.tile)
            weights = self.weights[:count]
            finished = self.sums[:, :count].argmax(axis=0).astype(np.uint8)
            finished[weights == 0] = IGNORE_INDEX
            self.sink(self.base, finished)
            self.sums = np.roll(self.sums, -count, axis=1)
            self.weights = np.roll(self.weights, -count, axis=0)
            self.sums[:, -count:] = 0
            self.weights[-count:] = 0
            self.base += count


def stitch_mask(
    out_dir: Path,
    geometry: MaskGeometry,
    tiles: Any,
    classes: int,
) -> Path:
    """mask.npy from ``tiles``: (x, y, maps) in raster order, maps (N, classes, t, t)."""
    target = out_dir / "mask.npy"
    with atomic_path(target) as staging:
        mask = np.lib.format.open_memmap(
            staging, mode="w+", dtype=np.uint8, shape=(geometry.height, geometry.width)
        )

        def sink(first: int, rows: np.ndarray) -> None:
            mask[first : first + len(rows)] = rows

        stitcher = BandStitcher(classes, geometry.width, geometry.height, geometry.tile, sink)
        for x, y, maps in tiles:
            for column, row, tile_maps in zip(x, y, maps, strict=True):
                top, left = geometry.place(int(column), int(row))
                stitcher.add(top, left, tile_maps.astype(np.float32))
        stitcher.finish()
        mask.flush()  # on disk before the file is renamed into place
    return target


def class_pixels(mask: np.ndarray, classes: int, rows: int = 1024) -> np.ndarray:
    """Pixels of each class, counted a band of rows at a time (a memory-mapped mask)."""
    counts = np.zeros(256, dtype=np.int64)
    for start in range(0, mask.shape[0], rows):
        counts += np.bincount(np.asarray(mask[start : start + rows]).ravel(), minlength=256)
    return counts[:classes]


def write_mask_outputs(
    out_dir: Path,
    geometry: MaskGeometry,
    labels: list[str],
    thumbnail: np.ndarray,
    mpp: float | None,
) -> dict[str, Any]:
    """mask.png, mask-overlay.png and classes.geojson from mask.npy; the summary's section."""
    mask = np.load(out_dir / "mask.npy", mmap_mode="r")
    atomic_write_bytes(out_dir / "mask.png", mask_png_bytes(np.asarray(mask)))
    small = _resample(mask, thumbnail.shape[0], thumbnail.shape[1])
    picture = overlay(thumbnail, small, labels, alpha=0.5)
    with atomic_path(out_dir / "mask-overlay.png") as staging:
        picture.save(staging, format="PNG")
    atomic_write_text(
        out_dir / "classes.geojson", json.dumps(class_polygons(mask, labels, geometry))
    )
    counts = class_pixels(mask, len(labels))
    area = None if mpp is None else (mpp * geometry.downsample) ** 2
    total = int(counts.sum()) or 1
    return {
        "level": geometry.level,
        "downsample": geometry.downsample,
        "size": [geometry.width, geometry.height],
        "um_per_pixel": None if mpp is None else mpp * geometry.downsample,
        "classes": {
            label: {
                "pixels": int(counts[i]),
                "fraction_of_tissue": round(float(counts[i] / total), 6),
                "area_um2": None if area is None else round(float(counts[i] * area), 3),
            }
            for i, label in enumerate(labels)
        },
    }


def _resample(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resampling by index (a memory-mapped mask is read row by row)."""
    rows = np.minimum((np.arange(height) + 0.5) * mask.shape[0] / height, mask.shape[0] - 1)
    cols = np.minimum((np.arange(width) + 0.5) * mask.shape[1] / width, mask.shape[1] - 1)
    return np.asarray(mask[rows.astype(np.int64)][:, cols.astype(np.int64)])


def class_polygons(mask: np.ndarray, labels: list[str], geometry: MaskGeometry) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of QuPath annotations, level-0 pixel coordinates."""
    step = max(1, math.ceil(max(mask.shape) / POLYGON_SIDE))
    reduced = np.asarray(mask[::step, ::step])
    scale = geometry.downsample * step
    colours = palette(256)
    features = []
    for index, label in enumerate(labels):
        for rings in _regions(reduced == index):
            coordinates = [
                [[round(x * scale, 1), round(y * scale, 1)] for x, y in ring] for ring in rings
            ]
            features.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "Polygon", "coordinates": coordinates},
                    "properties": {
                        "objectType": "annotation",
                        "classification": {"name": label, "color": list(colours[index])},
                    },
                }
            )
    return {"type": "FeatureCollection", "features": features}


def _regions(binary: np.ndarray) -> list[list[np.ndarray]]:
    """Each region of ``binary`` as [outer ring, *holes], rings closed, (x, y) pixel corners."""
    from matplotlib.path import Path as Outline
    from skimage import measure

    if not binary.any():
        return []
    contours = measure.find_contours(np.pad(binary, 1).astype(np.uint8), 0.5)
    rings = []
    for contour in contours:
        simple = measure.approximate_polygon(contour - 1 + 0.5, tolerance=0.5)
        xy = simple[:, ::-1]  # (row, col) -> (x, y)
        area = 0.5 * float(np.dot(xy[:-1, 0], xy[1:, 1]) - np.dot(xy[1:, 0], xy[:-1, 1]))
        if abs(area) >= MIN_REGION_PIXELS and len(xy) >= 4:
            rings.append((area, xy))
    if not rings:
        return []
    sign = np.sign(max(rings, key=lambda r: abs(r[0]))[0])  # the largest ring is an outline
    outers = [[xy] for area, xy in rings if np.sign(area) == sign]
    for area, xy in rings:
        if np.sign(area) == sign:
            continue
        holders = [o for o in outers if Outline(o[0]).contains_point(tuple(xy[0]))]
        if holders:
            min(holders, key=lambda o: _area(o[0])).append(xy)
    return outers


def _area(ring: np.ndarray) -> float:
    return abs(0.5 * float(np.dot(ring[:-1, 0], ring[1:, 1]) - np.dot(ring[1:, 0], ring[:-1, 1])))
