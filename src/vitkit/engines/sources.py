"""What a batch job reads, and the id that names each input in the output.

- Image files and URLs, folders (searched recursively, as ``vitkit predict`` does) and list files
  (``.txt``/``.lst``/``.list``: one path or URL per line, ``#`` comments, paths relative to the
  list file): the id is the input as ``vitkit predict`` names it (the path, the URL, or the line
  of the list file).
- Parquet files or folders of them (local paths or any URI pyarrow reads, s3://...) with an image
  column of encoded bytes, URLs or paths (or Hugging Face datasets' ``{bytes, path}`` struct): the
  id is the ``id`` column (or ``id_column``), else the URL / path, else ``sha256:<hex>`` of the
  bytes (then identical images are one input).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from vitkit.engines.ids import IdSet
from vitkit.errors import EngineError
from vitkit.images.decode import IMAGE_EXTENSIONS, is_url
from vitkit.images.sources import expand_inputs

LIST_SUFFIXES = (".txt", ".lst", ".list")
# Where an image is found when no column is named: here and in vitkit.engines.batch. (Here, so
# that the tasks that read Parquet do not import torch along with the model classes.)
IMAGE_COLUMNS = ("image", "bytes", "image_bytes", "url", "path")


@dataclass(frozen=True)
class ImageItems:
    """Inputs given one by one: ``ids[i]`` names ``images[i]`` (a path or URL)."""

    ids: list[str]
    images: list[str]


@dataclass(frozen=True)
class ParquetImages:
    """Parquet with one image per row, read by row group (``pieces``: file, row group index) on
    the workers; ``id_column`` None: ids come from the image column."""

    pieces: list[tuple[str, int]]
    filesystem: Any  # pyarrow.fs.FileSystem: local, S3, GCS... (picklable, shipped to workers)
    image_column: str
    id_column: str | None
    rows: int

    @property
    def columns(self) -> list[str]:
        return [self.image_column] + ([self.id_column] if self.id_column else [])


Source = ImageItems | ParquetImages


def open_source(
    inputs: list[str], *, image_column: str | None = None, id_column: str | None = None
) -> Source:
    """The job's inputs, from the command line's SOURCE arguments."""
    parquet = [item for item in inputs if is_parquet(item)]
    if not parquet:
        return image_items(inputs)
    if len(parquet) != len(inputs):
        raise EngineError(
            "give either Parquet inputs or image files / folders / list files, not both "
            f"(Parquet: {parquet[0]})"
        )
    return parquet_images(parquet, image_column=image_column, id_column=id_column)


def is_parquet(item: str) -> bool:
    """A .parquet file or folder, or a local folder holding Parquet files and no images."""
    if item.rstrip("/").endswith(".parquet"):
        return True
    path = Path(item)
    if is_url(item) or not path.is_dir():
        return False
    has_parquet = False
    for file in path.rglob("*"):
        if file.suffix.lower() in IMAGE_EXTENSIONS:
            return False  # stop at the first image: a folder of photos may hold millions
        has_parquet = has_parquet or file.suffix == ".parquet"
    return has_parquet


# ---- files, folders, list files ----------------------------------------------------------------
def image_items(inputs: list[str]) -> ImageItems:
    ids: list[str] = []
    images: list[str] = []
    for item in inputs:
        if Path(item).suffix.lower() in LIST_SUFFIXES and Path(item).is_file():
            for line, image in read_list_file(Path(item)):
                ids.append(line)
                images.append(image)
        else:
            for found in expand_inputs([item]):
                ids.append(found)
                images.append(found)
    return ImageItems(ids, images)


def read_list_file(path: Path) -> list[tuple[str, str]]:
    """(line as written, path or URL to read) for each line that names an input."""
    entries = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        image = line if is_url(line) or os.path.isabs(line) else str(path.parent / line)
        entries.append((line, image))
    return entries


# ---- Parquet ---------------------------------------------------------------------------------
def parquet_images(
    paths: list[str], *, image_column: str | None, id_column: str | None
) -> ParquetImages:
    """Reads the footers only (schema, row groups), here on the driver."""
    try:
        dataset = pads.dataset(paths, format="parquet")
        fragments = list(dataset.get_fragments())
        pieces = [(f.path, group.id) for f in fragments for group in f.row_groups]
        rows = sum(group.num_rows for f in fragments for group in f.row_groups)
    except (OSError, pa.ArrowInvalid) as error:
        raise EngineError(f"cannot read Parquet {', '.join(paths)}: {error}") from error
    names = list(dataset.schema.names)
    image = image_column or next((c for c in IMAGE_COLUMNS if c in names), None)
    if image is None or image not in names:
        wanted = image_column or f"one of {', '.join(IMAGE_COLUMNS)}"
        raise EngineError(
            f"{paths[0]}: no image column {wanted} (columns: {', '.join(names)}); "
            "name it with --image-column"
        )
    if id_column is not None and id_column not in names:
        raise EngineError(f"{paths[0]}: no id column {id_column!r} (columns: {', '.join(names)})")
    if id_column is None and "id" in names and image != "id":
        id_column = "id"
    return ParquetImages(pieces, dataset.filesystem, image, id_column, rows)


def read_pieces(
    pieces: dict[str, Any], *, source: ParquetImages, done: IdSet, rows_per_block: int
) -> Iterator[pa.Table]:
    """Ray task: row groups -> ``{id, image}`` rows not yet written, ``rows_per_block`` at a time
    (a row group of a million images is never read whole)."""
    for path, group in zip(pieces["path"], pieces["row_group"], strict=True):
        with source.filesystem.open_input_file(str(path)) as handle:
            batches = pq.ParquetFile(handle).iter_batches(
                batch_size=rows_per_block, row_groups=[int(group)], columns=source.columns
            )
            for batch in batches:
                rows = rows_to_do(pa.Table.from_batches([batch]), source, done)
                if rows.num_rows:
                    yield rows


def rows_to_do(table: pa.Table, source: ParquetImages, done: IdSet) -> pa.Table:
    """Parquet rows -> ``{id, image}`` rows whose id is not in ``done``."""
    image = table.column(source.image_column)
    if pa.types.is_struct(image.type):  # Hugging Face datasets' Image: {bytes, path}
        image = pc.struct_field(image, "bytes")
    if source.id_column is not None:
        ids = table.column(source.id_column).cast(pa.string())
    elif pa.types.is_string(image.type) or pa.types.is_large_string(image.type):
        ids = image
    else:
        ids = pa.array([content_id(value) for value in image.to_pylist()], pa.string())
    rows = pa.table({"id": ids, "image": image})
    todo = ~done.contains(rows.column("id").to_pylist())
    return rows.filter(pa.array(todo)) if not np.all(todo) else rows


def content_id(data: bytes | None) -> str:
    return "sha256:" + hashlib.sha256(data or b"").hexdigest()
