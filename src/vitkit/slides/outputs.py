"""A finished slide's outputs, written from its result shards in bounded memory.

In ``OUT/<slide>/``:

- ``tiles.parquet`` and ``tiles.csv``: one row per tile run: ``x, y, width, height`` in level-0
  pixels (the coordinates QuPath and OpenSlide use), ``level`` read, ``tissue`` fraction,
  ``prob_<label>`` per class, ``top_class``, ``top_probability``;
- ``tiles.geojson``: a FeatureCollection of tile squares (QuPath: File > Import objects), each
  with ``objectType: tile``, its top class as ``classification`` and the probabilities as
  ``measurements``;
- ``heatmap-<label>.png``: the class's probability over the thumbnail, with a colour bar (the
  classes with the largest share of tissue, up to ``MAX_HEATMAPS``); ``thumbnail.png`` and
  ``tissue.png`` (the detected tissue outlined);
- ``embeddings.parquet`` (with ``--embed``): ``x, y`` and the tile's vector.

The summary (``summary.json``) is written by the caller last: its presence marks the folder
complete. Everything is written beside and renamed into place, so a killed run never leaves a
half file under a final name.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vitkit.errors import SlideError
from vitkit.slides.tiler import SlidePlan

MAX_HEATMAPS = 20
Shards = Callable[[], Iterator[tuple[range, dict[str, np.ndarray]]]]


def pyarrow_modules() -> tuple[Any, Any, Any]:
    try:
        import pyarrow
        import pyarrow.csv
        import pyarrow.parquet
    except ImportError:
        raise SlideError(
            "writing slide tables needs pyarrow: pip install 'vitkit[slides]'"
        ) from None
    return pyarrow, pyarrow.parquet, pyarrow.csv


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temporary name beside ``path``; rename it to ``path`` when the block succeeds."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def label_slug(label: str) -> str:
    """A label as it may appear in a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "class"


# ---- the tables -------------------------------------------------------------------------------
def write_tables(
    out_dir: Path, plan: SlidePlan, shards: Shards, labels: list[str] | None
) -> dict[str, Any]:
    """tiles.parquet, tiles.csv, tiles.geojson and embeddings.parquet (when shards hold
    embeddings); returns per-class sums for the summary."""
    pa, pq, pa_csv = pyarrow_modules()
    x0, y0 = plan.level0_xy()
    size = plan.geometry.level0_size
    sums = ClassSums(len(labels) if labels else 0)
    embedding_writer = None
    embeddings_path = out_dir / "embeddings.parquet"
    embeddings_tmp = embeddings_path.with_name(f".{embeddings_path.name}.tmp-{os.getpid()}")
    with (
        replacing(out_dir / "tiles.parquet") as parquet_tmp,
        replacing(out_dir / "tiles.csv") as csv_tmp,
        replacing(out_dir / "tiles.geojson") as geojson_tmp,
        open(geojson_tmp, "w", encoding="utf-8") as geojson,
    ):
        parquet_writer: Any = None
        csv_writer: Any = None
        geojson.write('{"type": "FeatureCollection", "features": [\n')
        for tiles, arrays in shards():
            columns = _tile_columns(plan, x0, y0, tiles, arrays, labels)
            table = pa.table(columns)
            if parquet_writer is None:
                parquet_writer = pq.ParquetWriter(parquet_tmp, table.schema)
                csv_writer = pa_csv.CSVWriter(csv_tmp, table.schema)
            parquet_writer.write_table(table)
            csv_writer.write_table(table)
            _write_features(geojson, columns, size, labels, first=tiles.start == 0)
            if labels:
                sums.add(arrays["probabilities"], plan.tissue[tiles.start : tiles.stop])
            if "embeddings" in arrays:
                embedding_writer = _write_embeddings(
                    embedding_writer, embeddings_tmp, columns, arrays["embeddings"]
                )
        geojson.write("]}\n")
        for writer in (parquet_writer, csv_writer, embedding_writer):
            if writer is not None:
                writer.close()
    if embedding_writer is not None:
        os.replace(embeddings_tmp, embeddings_path)
    else:
        embeddings_path.unlink(missing_ok=True)  # left by an earlier run with --embed
    return sums.summary(labels) if labels else {}


def _tile_columns(
    plan: SlidePlan,
    x0: np.ndarray,
    y0: np.ndarray,
    tiles: range,
    arrays: dict[str, np.ndarray],
    labels: list[str] | None,
) -> dict[str, Any]:
    count = len(tiles)
    size = plan.geometry.level0_size
    columns: dict[str, Any] = {
        "x": x0[tiles.start : tiles.stop],
        "y": y0[tiles.start : tiles.stop],
        "level": np.full(count, plan.geometry.level, dtype=np.int32),
        "width": np.full(count, size, dtype=np.int64),
        "height": np.full(count, size, dtype=np.int64),
        "tissue": plan.tissue[tiles.start : tiles.stop],
    }
    if labels:
        probabilities = arrays["probabilities"]
        for index, label in enumerate(labels):
            columns[f"prob_{label}"] = probabilities[:, index]
        top = probabilities.argmax(axis=1)
        columns["top_class"] = [labels[i] for i in top.tolist()]
        columns["top_probability"] = probabilities[np.arange(count), top]
    return columns


def _write_features(
    stream: Any, columns: dict[str, Any], size: int, labels: list[str] | None, *, first: bool
) -> None:
    colours = class_colours(len(labels)) if labels else []
    for row in range(len(columns["x"])):
        x, y = int(columns["x"][row]), int(columns["y"][row])
        box = [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]
        measurements = {"tissue": round(float(columns["tissue"][row]), 6)}
        properties: dict[str, Any] = {"objectType": "tile", "measurements": measurements}
        if labels:
            for label in labels:
                measurements[f"prob_{label}"] = float(columns[f"prob_{label}"][row])
            top = columns["top_class"][row]
            properties["classification"] = {"name": top, "color": colours[labels.index(top)]}
        feature = {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [box]},
            "properties": properties,
        }
        separator = "" if first and row == 0 else ",\n"
        stream.write(separator + json.dumps(feature))


def _write_embeddings(
    writer: Any, path: Path, columns: dict[str, Any], embeddings: np.ndarray
) -> Any:
    pa, pq, _ = pyarrow_modules()
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
    table = pa.table({"x": columns["x"], "y": columns["y"], "embedding": column})
    if writer is None:
        writer = pq.ParquetWriter(path, table.schema)
    writer.write_table(table)
    return writer


class ClassSums:
    """Per class: tissue-weighted count of tiles it tops, and of its probability."""

    def __init__(self, classes: int) -> None:
        self.top = np.zeros(classes, dtype=np.float64)
        self.probability = np.zeros(classes, dtype=np.float64)
        self.tissue = 0.0

    def add(self, probabilities: np.ndarray, tissue: np.ndarray) -> None:
        weights = tissue.astype(np.float64)
        np.add.at(self.top, probabilities.argmax(axis=1), weights)
        self.probability += weights @ probabilities.astype(np.float64)
        self.tissue += float(weights.sum())

    def summary(self, labels: list[str]) -> dict[str, Any]:
        total = self.tissue or 1.0
        return {
            label: {
                "share": round(float(self.top[i] / total), 6),
                "mean_probability": round(float(self.probability[i] / total), 6),
            }
            for i, label in enumerate(labels)
        }


def class_colours(count: int) -> list[list[int]]:
    """A distinct RGB colour per class (matplotlib's tab10 / tab20)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [[round(255 * c) for c in cmap(i % cmap.N)[:3]] for i in range(count)]


# ---- the pictures -----------------------------------------------------------------------------
def write_pictures(
    out_dir: Path,
    plan: SlidePlan,
    shards: Shards,
    labels: list[str] | None,
    classes: dict[str, Any],
) -> list[str]:
    """thumbnail.png, tissue.png and the heatmaps; returns the heatmap file names."""
    _save_png(plan.thumbnail.pixels, out_dir / "thumbnail.png")
    _save_png(_outline(plan.thumbnail.pixels, plan.mask), out_dir / "tissue.png")
    if not labels:
        return []
    chosen = sorted(range(len(labels)), key=lambda i: -classes[labels[i]]["share"])
    chosen = sorted(chosen[:MAX_HEATMAPS])
    grids = np.full((len(chosen), *plan.grid_shape), np.nan, dtype=np.float32)
    rows, columns = plan.grid_index()
    for tiles, arrays in shards():
        where = (rows[tiles.start : tiles.stop], columns[tiles.start : tiles.stop])
        for slot, index in enumerate(chosen):
            grids[slot][where] = arrays["probabilities"][:, index]
    names = []
    for slot, index in enumerate(chosen):
        name = f"heatmap-{label_slug(labels[index])}.png"
        picture = heatmap(plan, grids[slot], labels[index])
        _save_png(picture, out_dir / name)
        names.append(name)
    return names


def heatmap(plan: SlidePlan, grid: np.ndarray, label: str) -> np.ndarray:
    """The grid's probabilities in colour over the thumbnail, with a labelled colour bar."""
    thumbnail = plan.thumbnail.pixels
    values = _grid_on_thumbnail(plan, grid)
    painted = ~np.isnan(values)
    levels = np.round(np.nan_to_num(values[painted]) * 255).astype(np.uint8)
    colours = colour_table()[levels].astype(np.uint16)
    picture = thumbnail.copy()
    # 40% thumbnail, 60% colour, in integers: no float copy of a 2048-px picture per class
    picture[painted] = (2 * picture[painted].astype(np.uint16) + 3 * colours + 2) // 5
    return np.vstack([picture, colour_bar(thumbnail.shape[1], "0", "1", f"P({label})")])


def colour_table() -> np.ndarray:
    """(256, 3) uint8: matplotlib's viridis, probability 0 (dark blue) to 1 (yellow)."""
    from matplotlib import colormaps

    return np.round(colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def _grid_on_thumbnail(plan: SlidePlan, grid: np.ndarray) -> np.ndarray:
    """(h, w) of the thumbnail: each pixel takes the value of the grid cell it falls in."""
    height, width = plan.thumbnail.pixels.shape[:2]
    scale_x, scale_y = plan.thumbnail.level0_per_pixel
    geometry = plan.geometry
    step = geometry.read_stride * geometry.downsample  # level-0 pixels per grid cell
    # Overlapping tiles: a pixel shows the tile whose centre is nearest, so the map is not
    # shifted up and left by the overlap.
    shift = (geometry.read_size - geometry.read_stride) * geometry.downsample / 2
    column = np.floor(((np.arange(width) + 0.5) * scale_x - shift) / step).astype(np.int64)
    row = np.floor(((np.arange(height) + 0.5) * scale_y - shift) / step).astype(np.int64)
    column, row = np.maximum(column, 0), np.maximum(row, 0)
    inside = (row[:, None] < grid.shape[0]) & (column[None, :] < grid.shape[1])
    values = grid[np.minimum(row, grid.shape[0] - 1)][:, np.minimum(column, grid.shape[1] - 1)]
    return np.where(inside, values, np.nan)


def colour_bar(width: int, low: str, high: str, label: str) -> np.ndarray:
    """A viridis ramp under a picture ``width`` pixels wide, ``low``/``high`` at its ends and
    ``label`` beside it, in text scaled to the picture: legible when a 2048-px heatmap is shown
    at page width."""
    size = max(12, width // 60)
    font = ImageFont.load_default(size=size)
    ramp_width, top = max(1, width // 2), size // 3
    bar = np.full((top + 2 * size + size // 2, width, 3), 255, dtype=np.uint8)
    ramp = colour_table()[np.linspace(0, 255, ramp_width).round().astype(np.int64)]
    bar[top : top + size, :ramp_width] = ramp[None]
    image = Image.fromarray(bar)
    draw = ImageDraw.Draw(image)
    below = top + size + 2
    draw.text((0, below), low, fill=(0, 0, 0), font=font, anchor="la")
    draw.text((ramp_width, below), high, fill=(0, 0, 0), font=font, anchor="ra")
    draw.text((ramp_width + size, top + size // 2), label, fill=(0, 0, 0), font=font, anchor="lm")
    return np.asarray(image)


def _outline(thumbnail: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The thumbnail with the tissue mask's border drawn in green."""
    edge = np.zeros_like(mask)
    edge[1:, :] |= mask[1:, :] != mask[:-1, :]
    edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    picture = thumbnail.copy()
    picture[edge] = (0, 200, 0)
    return picture


def _save_png(pixels: np.ndarray, path: Path) -> None:
    with replacing(path) as tmp:
        # zlib level 1: a 2048-px PNG in ~0.1 s instead of ~0.5 s, for files ~30% larger
        Image.fromarray(pixels).save(tmp, format="PNG", compress_level=1)


def iter_shards(ranges: Iterable[range], load: Callable[[int], dict[str, np.ndarray]]) -> Shards:
    """A re-iterable source of (tile range, arrays) over shards stored on disk."""
    ranges = list(ranges)

    def shards() -> Iterator[tuple[range, dict[str, np.ndarray]]]:
        for index, tiles in enumerate(ranges):
            yield tiles, load(index)

    return shards
