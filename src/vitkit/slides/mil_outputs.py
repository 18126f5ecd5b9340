"""What a pathologist looks at after a slide-level prediction, written into the slide's folder.

In ``OUT/<slide>/`` (beside what ``vitkit slide --embed`` wrote there, or copied from it):

- ``tiles.parquet`` and ``tiles.csv``: the tile table with two more columns, ``attention`` (the
  tile's weight in the slide's prediction; the weights of a slide sum to 1) and
  ``attention_percentile`` (its rank among the slide's tiles, 0 lowest to 1 highest);
- ``attention.geojson``: the tiles as squares with both as QuPath measurements (File > Import
  objects; Measure > Show measurement maps colours them);
- ``heatmap-attention.png``: the attention over the thumbnail, with a colour bar: each tile's
  percentile (default) or its weight over the slide's largest (``scale="linear"``);
- ``gallery.png``: the ``top_k`` most and least attended tiles, read from the slide;
- ``prediction.json``: the probabilities, the predicted class (or labels) and the model.

Percentiles rather than raw weights colour the maps (as CLAM's heat maps do): raw weights
shrink as 1 / tiles, so one slide's map would not compare with another's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vitkit.atomic_files import atomic_write_text
from vitkit.slides.outputs import colour_bar, colour_table, pyarrow_modules, replacing
from vitkit.slides.readers import open_slide

ATTENTION_COLUMNS = ("attention", "attention_percentile")
GALLERY_TILE = 112  # pixels per tile in gallery.png


def percentiles(attention: np.ndarray) -> np.ndarray:
    """Each tile's rank among the slide's, 0 (least attended) to 1 (most); ties share a rank."""
    if attention.size == 1:
        return np.ones(1)
    order = np.argsort(attention, kind="mergesort")
    ranks = np.empty(attention.size)
    ranks[order] = np.arange(attention.size)
    # ties: the mean rank of their run, so equal weights get equal colours
    _, inverse = np.unique(attention, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    counts = np.bincount(inverse)
    return (sums / counts)[inverse] / (attention.size - 1)


# ---- the tile table -----------------------------------------------------------------------------
def read_tile_table(folder: Path) -> Any:
    """The slide's tiles.parquet (a pyarrow Table) without earlier attention columns."""
    _, pq, _ = pyarrow_modules()
    table = pq.read_table(folder / "tiles.parquet")
    return table.drop_columns([c for c in ATTENTION_COLUMNS if c in table.column_names])


def write_tile_tables(out_dir: Path, tiles: Any, attention: np.ndarray) -> None:
    """tiles.parquet and tiles.csv with the attention columns added."""
    pa, pq, pa_csv = pyarrow_modules()
    table = tiles.append_column("attention", pa.array(attention.astype(np.float64)))
    table = table.append_column("attention_percentile", pa.array(percentiles(attention)))
    with replacing(out_dir / "tiles.parquet") as parquet_tmp:
        pq.write_table(table, parquet_tmp)
    with replacing(out_dir / "tiles.csv") as csv_tmp:
        pa_csv.write_csv(table, csv_tmp)


def write_geojson(out_dir: Path, tiles: Any, attention: np.ndarray) -> None:
    """attention.geojson: one square per tile, attention and its percentile as measurements."""
    x, y = tiles.column("x").to_numpy(), tiles.column("y").to_numpy()
    width, height = tiles.column("width").to_numpy(), tiles.column("height").to_numpy()
    ranks = percentiles(attention)
    with (
        replacing(out_dir / "attention.geojson") as tmp,
        open(tmp, "w", encoding="utf-8") as stream,
    ):
        stream.write('{"type": "FeatureCollection", "features": [\n')
        for row in range(len(x)):
            left, top = int(x[row]), int(y[row])
            right, bottom = left + int(width[row]), top + int(height[row])
            box = [[left, top], [right, top], [right, bottom], [left, bottom], [left, top]]
            feature = {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [box]},
                "properties": {
                    "objectType": "tile",
                    "measurements": {
                        "attention": float(attention[row]),
                        "attention_percentile": round(float(ranks[row]), 6),
                    },
                },
            }
            stream.write(("" if row == 0 else ",\n") + json.dumps(feature))
        stream.write("]}\n")


# ---- the pictures -------------------------------------------------------------------------------
def write_heatmap(
    out_dir: Path,
    folder: Path,
    summary: dict[str, Any],
    tiles: Any,
    attention: np.ndarray,
    *,
    scale: str = "percentile",
) -> None:
    """heatmap-attention.png: each tile's attention percentile (or, ``linear``, its weight over
    the slide's largest) over the thumbnail."""
    thumbnail = np.asarray(Image.open(folder / "thumbnail.png").convert("RGB"))
    values = percentiles(attention) if scale == "percentile" else attention / attention.max()
    grid = attention_grid(summary, tiles, values)
    on_thumbnail = grid_on_thumbnail(summary, grid, thumbnail.shape[:2])
    painted = ~np.isnan(on_thumbnail)
    levels = np.round(on_thumbnail[painted] * 255).astype(np.uint8)
    colours = colour_table()[levels].astype(np.uint16)
    picture = thumbnail.copy()
    picture[painted] = (2 * picture[painted].astype(np.uint16) + 3 * colours + 2) // 5
    title = "attention (percentile)" if scale == "percentile" else "attention / slide maximum"
    picture = np.vstack([picture, colour_bar(thumbnail.shape[1], "low", "high", title)])
    _save_png(picture, out_dir / "heatmap-attention.png")


def attention_grid(summary: dict[str, Any], tiles: Any, values: np.ndarray) -> np.ndarray:
    """(rows, columns) of the tile grid: each tile's value, NaN where no tile ran."""
    geometry = summary["tiles"]
    downsample = summary["levels"][geometry["level"]][2]
    stride = geometry["read_stride"]
    grid = np.full(tuple(geometry["grid"]), np.nan, dtype=np.float32)
    column = np.round(tiles.column("x").to_numpy() / downsample).astype(np.int64) // stride
    row = np.round(tiles.column("y").to_numpy() / downsample).astype(np.int64) // stride
    grid[row, column] = values
    return grid


def grid_on_thumbnail(
    summary: dict[str, Any], grid: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
    """(h, w) of the thumbnail: each pixel takes the value of the grid cell it falls in (the
    tile whose centre is nearest, where tiles overlap)."""
    height, width = shape
    level0_width, level0_height = summary["size"]
    geometry = summary["tiles"]
    downsample = summary["levels"][geometry["level"]][2]
    step = geometry["read_stride"] * downsample
    shift = (geometry["read_size"] - geometry["read_stride"]) * downsample / 2
    column = np.floor(((np.arange(width) + 0.5) * level0_width / width - shift) / step).astype(
        np.int64
    )
    row = np.floor(((np.arange(height) + 0.5) * level0_height / height - shift) / step).astype(
        np.int64
    )
    column, row = np.maximum(column, 0), np.maximum(row, 0)
    inside = (row[:, None] < grid.shape[0]) & (column[None, :] < grid.shape[1])
    values = grid[np.minimum(row, grid.shape[0] - 1)][:, np.minimum(column, grid.shape[1] - 1)]
    return np.where(inside, values, np.nan)


def write_gallery(
    out_dir: Path, summary: dict[str, Any], tiles: Any, attention: np.ndarray, top_k: int
) -> bool:
    """gallery.png: the ``top_k`` most attended tiles over the ``top_k`` least, read from the
    slide file; False (nothing written) when the slide file is gone."""
    slide = Path(summary["slide"])
    if not slide.is_file():
        return False
    k = min(top_k, len(attention))
    order = np.argsort(-attention, kind="mergesort")
    rows = [("highest attention", order[:k]), ("lowest attention", order[::-1][:k])]
    geometry = summary["tiles"]
    downsample = summary["levels"][geometry["level"]][2]
    size, label_height = GALLERY_TILE, 14
    canvas = Image.new(
        "RGB", (k * (size + 4) + 4, len(rows) * (size + 2 * label_height + 4)), "white"
    )
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=12)
    reader_name = summary.get("settings", {}).get("reader", "auto")
    with open_slide(slide, reader_name) as reader:
        for line, (title, picks) in enumerate(rows):
            top = line * (size + 2 * label_height + 4)
            draw.text((4, top), title, fill=(0, 0, 0), font=font)
            for slot, index in enumerate(picks.tolist()):
                x = round(int(tiles.column("x")[index].as_py()) / downsample)
                y = round(int(tiles.column("y")[index].as_py()) / downsample)
                pixels = reader.read(
                    geometry["level"], x, y, geometry["read_size"], geometry["read_size"]
                )
                tile = Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR)
                left = 4 + slot * (size + 4)
                canvas.paste(tile, (left, top + label_height))
                caption = f"{attention[index]:.3g}"
                draw.text((left, top + label_height + size + 1), caption, fill=(0, 0, 0), font=font)
    _save_png(np.asarray(canvas), out_dir / "gallery.png")
    return True


def write_prediction(out_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_text(out_dir / "prediction.json", json.dumps(record, indent=2) + "\n")


def _save_png(pixels: np.ndarray, path: Path) -> None:
    with replacing(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG", compress_level=1)
