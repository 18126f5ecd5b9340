"""Image datasets as teams store them: ``datasets`` folders, Hub-style Parquet, WebDataset shards.

``--data`` takes, besides class folders and label tables:

- a folder written by ``datasets``' ``save_to_disk`` (a ``DatasetDict`` with train / validation /
  test splits, or one ``Dataset``), read memory-mapped with ``datasets.load_from_disk``;
- Parquet files with an image column and a label column, the layout of image datasets on the
  Hugging Face Hub (``data/train-00000-of-00001.parquet``, ``test.parquet``, ...): splits by
  file name as ``datasets`` resolves them (``datasets.data_files.get_data_patterns``), or by a
  ``split`` column; the features (``Image``, ``ClassLabel`` names) from the files' own
  metadata; read with pyarrow, without a conversion or a cache copy;
- WebDataset ``.tar`` shards (a folder of them, or one): each sample is the files sharing a key
  (``0001.png`` + ``0001.cls``); the label is ``.cls`` (a class index; names from
  ``classes.txt`` beside the shards), ``.txt`` (a class name) or ``.json`` (``{"label": ...}``,
  a list for several labels); splits by shard name (``train-000000.tar``, ``test-...``). The
  shards are indexed once (member offsets) and images are read straight from them when needed:
  nothing is extracted. (The ``webdataset`` library iterates shards in order; training needs
  the random access that a tar's member offsets give.)

Whatever the store, the images become the same samples a class folder gives: the same
stratified validation split (recorded in ``OUT/split.json`` by sample id, ``<split>/<row>``),
the same oversampling and the same scan for unreadable images, which are decoded by
``vitkit.images.decode`` from their stored bytes exactly as from files. A label column holding
lists (``Sequence(ClassLabel)``, lists of names) trains multi-label. Samples are ordered by
class, then by their stored file name (when the store keeps one), so a folder and the same
images stored otherwise give the same splits and, for a fixed seed, the same trained weights.
"""

from __future__ import annotations

import importlib.util
import io
import json
import tarfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vitkit.atomic_files import atomic_write_text
from vitkit.errors import DatasetError
from vitkit.images.decode import load_image
from vitkit.training.data import DataSplits, Sample, stratified_split
from vitkit.training.labels import MultiLabelSample, is_label_table, multilabel_split

STORE_KINDS = ("datasets", "parquet", "webdataset")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
IMAGE_NAMES = ("image", "img", "png", "jpg", "jpeg", "webp", "pixel_values")
LABEL_NAMES = ("label", "labels", "class", "target")
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "ppm", "pgm")


def store_kind(path: str | Path) -> str | None:
    """Which stored layout ``path`` is (one of STORE_KINDS), or None (folders, tables)."""
    path = Path(path)
    if path.is_file():
        return {".tar": "webdataset", ".parquet": "parquet"}.get(path.suffix.lower())
    if not path.is_dir():
        return None
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return "datasets"
    if next(path.glob("**/*.parquet"), None) is not None:
        return "parquet"
    if next(path.glob("**/*.tar"), None) is not None:
        return "webdataset"
    return None


# ---- where the image bytes are --------------------------------------------------------------
class ArrowImages:
    """Image cells of an Arrow table: ``datasets``' Image storage (``{bytes, path}``) or bytes."""

    def __init__(self, table: Any, column: str, folder: Path) -> None:
        self.cells = table.column(column)
        self.folder = folder  # where a cell's relative path points, when it holds no bytes

    def read(self, row: int) -> bytes:
        cell = self.cells[row].as_py()
        if isinstance(cell, dict):
            if cell.get("bytes") is not None:
                return bytes(cell["bytes"])
            if cell.get("path"):
                return (self.folder / cell["path"]).read_bytes()
            raise DatasetError(f"row {row}: the image cell holds neither bytes nor a path")
        if cell is None:
            raise DatasetError(f"row {row}: no image")
        return bytes(cell)

    def name(self, row: int) -> str:
        cell = self.cells[row].as_py()
        return str(cell.get("path") or "") if isinstance(cell, dict) else ""


class TarImages:
    """Image members of WebDataset shards, read at their offsets (the shards stay packed)."""

    def __init__(self) -> None:
        self.members: list[tuple[str, int, int]] = []  # (shard, data offset, size)

    def add(self, shard: Path, member: tarfile.TarInfo) -> int:
        self.members.append((str(shard), member.offset_data, member.size))
        return len(self.members) - 1

    def read(self, row: int) -> bytes:
        shard, offset, size = self.members[row]
        with open(shard, "rb") as handle:
            handle.seek(offset)
            return handle.read(size)


@dataclass(frozen=True)
class StoredSample(Sample):
    """A single-label sample whose image is a stored cell or member (``path``: its id)."""

    store: Any = field(default=None, compare=False, repr=False)
    row: int = 0
    name: str = ""  # the stored file name, if any

    def open_image(self) -> Image.Image:
        return decode_stored(self.store, self.row, self.path)


@dataclass(frozen=True, eq=False)
class StoredMultiLabelSample(MultiLabelSample):
    """A multi-label sample (multi-hot ``label``) whose image is stored."""

    store: Any = field(default=None, repr=False)
    row: int = 0
    name: str = ""

    def open_image(self) -> Image.Image:
        return decode_stored(self.store, self.row, self.path)


def decode_stored(store: Any, row: int, sample_id: str) -> Image.Image:
    """The stored bytes decoded as a file would be (``vitkit.images.decode``)."""

    data = store.read(row)
    try:
        return load_image(io.BytesIO(data))
    except Exception as error:  # name the sample, keep the decoder's reason
        raise DatasetError(f"{sample_id}: {error}") from error


# ---- records: what every store gives ------------------------------------------------------
@dataclass
class Records:
    """One split's images: where each is, its stored name and its label value(s)."""

    store: Any
    rows: list[int]
    names: list[str]
    labels: list[Any]  # a class (index or name) per image, or a list of them


@dataclass
class StoredData:
    kind: str
    classes: list[str]
    multi_label: bool
    splits: dict[str, Records]  # "train", and "val" / "test" when stored


def read_store(
    path: str | Path, image_column: str | None = None, label_column: str | None = None
) -> StoredData:
    """The stored dataset at ``path``: its splits' records and class names."""
    path = Path(path)
    kind = store_kind(path)
    if kind in ("datasets", "parquet"):
        _require_datasets(path, kind)
    if kind == "datasets":
        tables, features = _datasets_tables(path)
    elif kind == "parquet":
        tables, features = _parquet_tables(path)
    elif kind == "webdataset":
        return _webdataset(path)
    else:
        raise DatasetError(f"{path}: not a datasets folder, Parquet files or WebDataset shards")
    image = _pick_column(path, features, image_column, IMAGE_NAMES, "image", _is_image_feature)
    label = _pick_column(path, features, label_column, LABEL_NAMES, "label", _is_label_feature)
    classes, multi_label = _class_names(features[label], [t.column(label) for t in tables.values()])
    splits = {}
    for split, table in tables.items():
        images = ArrowImages(table, image, path)
        rows = list(range(table.num_rows))
        names = [images.name(row) for row in rows]
        splits[split] = Records(images, rows, names, table.column(label).to_pylist())
    return StoredData(kind, classes, multi_label, splits)


def _require_datasets(path: Path, kind: str) -> None:
    """Hugging Face ``datasets`` reads both layouts (and a Hub repository's split names)."""
    if importlib.util.find_spec("datasets") is None:
        raise DatasetError(
            f"{path}: reading {kind} needs Hugging Face datasets: pip install 'vitkit[datasets]'"
        )


def _datasets_tables(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    parts = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    tables, features = {}, {}
    for split, dataset in parts.items():
        name = _split_name(path, split)
        dataset = dataset.flatten_indices() if dataset._indices is not None else dataset
        tables[name] = dataset.data.table
        features = dict(dataset.features)
    return _by_split_column(tables, features), features


def _parquet_files(path: Path) -> dict[str, list[str]]:
    """The Parquet files of each split, as ``datasets`` resolves a Hub repository's layout."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    if path.is_file():
        return {"train": [str(path)]}
    resolved = DataFilesDict.from_patterns(get_data_patterns(str(path)), base_path=str(path))
    files = {
        _split_name(path, str(split)): sorted(f for f in found if f.endswith(".parquet"))
        for split, found in resolved.items()
    }
    files = {split: names for split, names in files.items() if names}
    if not files:
        raise DatasetError(f"{path}: no .parquet files")
    return files


def _parquet_features(path: Path, schema: Any = None) -> dict[str, Any]:
    """The ``datasets`` features the files' metadata records, else the columns' Arrow types."""
    import datasets
    import pyarrow.parquet as pq

    if schema is None:
        schema = pq.read_schema(next(iter(_parquet_files(path).values()))[0])
    try:
        return dict(datasets.Features.from_arrow_schema(schema))
    except Exception:  # a Parquet file with foreign metadata
        return {name: schema.field(name).type for name in schema.names}


def _parquet_tables(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # The images' encoded bytes are held in memory (memory-mapped where the file allows):
    # save_to_disk folders and shards are read in place instead, for sets larger than memory.
    tables = {
        split: pa.concat_tables([pq.read_table(name, memory_map=True) for name in names])
        for split, names in _parquet_files(path).items()
    }
    features = _parquet_features(path, next(iter(tables.values())).schema)
    return _by_split_column(tables, features), features


def _split_name(path: Path, split: str) -> str:
    name = SPLIT_ALIASES.get(str(split).lower())
    if name is None:
        raise DatasetError(
            f"{path}: split {split!r} is not one of {', '.join(sorted(SPLIT_ALIASES))}; rename it"
        )
    return name


def _by_split_column(tables: dict[str, Any], features: dict[str, Any]) -> dict[str, Any]:
    """One table with a ``split`` column becomes one table per split."""
    if list(tables) != ["train"] or "split" not in features:
        return tables
    table = tables["train"]
    values = table.column("split").to_pylist()
    found: dict[str, list[int]] = defaultdict(list)
    for row, value in enumerate(values):
        found[_split_name(Path("split column"), str(value))].append(row)
    return {split: table.take(rows) for split, rows in found.items()}


def _pick_column(
    path: Path,
    features: dict[str, Any],
    given: str | None,
    usual: Sequence[str],
    what: str,
    fits: Any,
) -> str:
    if given is not None:
        if given not in features:
            raise DatasetError(
                f"{path}: no column {given!r} (columns: {', '.join(features)}); name the {what} "
                f"column with --{what}-column"
            )
        return given
    for name, feature in features.items():
        if fits(feature):
            return name
    for name in usual:
        if name in features:
            return name
    raise DatasetError(
        f"{path}: which column holds the {what}? (columns: {', '.join(features)}); name it with "
        f"--{what}-column"
    )


def _is_image_feature(feature: Any) -> bool:
    return type(feature).__name__ == "Image"


def _is_label_feature(feature: Any) -> bool:
    inner = getattr(feature, "feature", None)  # Sequence(ClassLabel) / List(ClassLabel)
    return type(feature).__name__ == "ClassLabel" or type(inner).__name__ == "ClassLabel"


def _class_names(feature: Any, columns: list[Any]) -> tuple[list[str], bool]:
    """(class names in index order, multi-label) from a label feature and its values."""
    inner = getattr(feature, "feature", None)
    if type(feature).__name__ == "ClassLabel":
        return list(feature.names), False
    if inner is not None and type(inner).__name__ == "ClassLabel":
        return list(inner.names), True
    values = [value for column in columns for value in column.to_pylist()]
    multi_label = any(isinstance(value, list) for value in values)
    flat = [v for value in values for v in (value if isinstance(value, list) else [value])]
    return _names_of(flat), multi_label


def _names_of(values: list[Any]) -> list[str]:
    """Class names from label values: names sorted (as class folders are), indices 0..K-1."""
    present = {v for v in values if v is not None}
    if all(isinstance(v, int) for v in present):
        return [str(i) for i in range(max(present, default=-1) + 1)]
    return sorted(str(v) for v in present)


# ---- WebDataset shards -----------------------------------------------------------------------
def _webdataset(path: Path) -> StoredData:
    shards = [path] if path.is_file() else sorted(path.glob("**/*.tar"))
    images = TarImages()
    splits: dict[str, Records] = {}
    for shard in shards:
        split = _shard_split(shard)
        records = splits.setdefault(split, Records(images, [], [], []))
        for key, parts in _shard_samples(shard).items():
            image = next((parts[e] for e in IMAGE_EXTENSIONS if e in parts), None)
            if image is None:
                continue  # a key without an image (metadata only)
            records.rows.append(images.add(shard, image))
            records.names.append(key)
            records.labels.append(_tar_label(shard, key, parts))
    if not splits or not any(r.rows for r in splits.values()):
        raise DatasetError(f"{path}: no image in the .tar shards (expected KEY.png + KEY.cls)")
    values = [v for records in splits.values() for v in records.labels]
    multi_label = any(isinstance(v, list) for v in values)
    classes_file = (path if path.is_dir() else path.parent) / "classes.txt"
    if classes_file.is_file():
        classes = [line.strip() for line in classes_file.read_text().splitlines() if line.strip()]
    else:
        classes = _names_of([x for v in values for x in (v if isinstance(v, list) else [v])])
    return StoredData("webdataset", classes, multi_label, splits)


def _shard_split(shard: Path) -> str:
    words = shard.stem.lower().replace("_", "-").replace(".", "-").split("-")
    return next((SPLIT_ALIASES[w] for w in words if w in SPLIT_ALIASES), "train")


LABEL_EXTENSIONS = ("cls", "json", "txt", "label")


def _shard_samples(shard: Path) -> dict[str, dict[str, Any]]:
    """One pass over a shard: per key (the name up to the first dot of its file name, as
    WebDataset groups them), the image members (read later, at their offsets) and the label
    files' text (small: read now)."""
    grouped: dict[str, dict[str, Any]] = defaultdict(dict)
    try:
        with tarfile.open(shard, mode="r:") as archive:  # uncompressed: data is seeked past
            for member in archive:
                if not member.isfile():
                    continue
                folder, _, base = member.name.rpartition("/")
                stem, _, extension = base.partition(".")
                key, extension = (f"{folder}/{stem}" if folder else stem), extension.lower()
                if extension in LABEL_EXTENSIONS:
                    handle = archive.extractfile(member)
                    assert handle is not None
                    grouped[key][extension] = handle.read().decode("utf-8").strip()
                else:
                    grouped[key][extension] = member
    except tarfile.TarError as error:
        raise DatasetError(
            f"{shard}: not a readable .tar shard ({error}); WebDataset shards are uncompressed tar files"
        ) from None
    return grouped


def _tar_label(shard: Path, key: str, parts: dict[str, Any]) -> Any:
    if "cls" in parts:
        return int(parts["cls"])
    if "json" in parts:
        value = json.loads(parts["json"])
        return value.get("labels", value.get("label")) if isinstance(value, dict) else value
    for extension in ("txt", "label"):
        if extension in parts:
            return parts[extension]
    raise DatasetError(
        f"{shard}: sample {key!r} has no label (.cls, .txt or .json beside its image)"
    )


# ---- splits ---------------------------------------------------------------------------------
def prepare_stored_splits(
    data: str | Path,
    run_dir: str | Path | None,
    val_fraction: float,
    seed: int,
    columns: tuple[str | None, str | None] = (None, None),
) -> DataSplits:
    """The single-label splits of a stored dataset: stored validation split, or a stratified
    one of the training split (``run_dir/split.json``, reused when it exists)."""
    stored = read_store(data, *columns)
    if stored.multi_label:
        raise DatasetError(
            f"{data}: the label column holds lists (several labels per image): train it "
            "multi-label (vitkit train does, for such data)"
        )
    found: dict[str, list[Sample]] = {
        split: list(_single_samples(stored, split)) for split in stored.splits
    }
    train, val = found.get("train", []), found.get("val")
    if not train:
        raise DatasetError(f"{data}: no training split (name one train, or give a split column)")
    if val is None:
        labels = [sample.label for sample in train]
        val_ids = _validation_ids(data, stored, run_dir, val_fraction, seed, train, labels)
        train, val = (
            [s for s in train if s.path not in val_ids],
            [s for s in train if s.path in val_ids],
        )
    return DataSplits(stored.classes, train, val, found.get("test", []), source=stored.kind)


def prepare_stored_multilabel(
    data: str | Path,
    run_dir: str | Path | None,
    val_fraction: float,
    seed: int,
    columns: tuple[str | None, str | None] = (None, None),
) -> DataSplits:
    """The multi-label splits of a stored dataset whose label column holds lists."""
    stored = read_store(data, *columns)
    # DataSplits holds multi-hot samples in its lists, as label tables' (see tasks.multilabel)
    found: dict[str, list[Any]] = {
        split: list(_multi_samples(stored, split)) for split in stored.splits
    }
    train, val = found.get("train", []), found.get("val")
    if not train:
        raise DatasetError(f"{data}: no training split (name one train, or give a split column)")
    if val is None:
        targets = np.stack([sample.label for sample in train])
        val_ids = _validation_ids(data, stored, run_dir, val_fraction, seed, train, targets)
        train, val = (
            [s for s in train if s.path not in val_ids],
            [s for s in train if s.path in val_ids],
        )
    return DataSplits(
        stored.classes, list(train), list(val), list(found.get("test", [])), source=stored.kind
    )


def is_multi_label_data(
    data: str | Path, columns: tuple[str | None, str | None] = (None, None)
) -> bool:
    """Several labels per image: a label table, or a stored dataset whose labels are lists
    (for Parquet, told from the files' schema alone: no image is read)."""
    kind = store_kind(data)
    if kind == "parquet":
        features = _parquet_features(Path(data))
        label = _pick_column(
            Path(data), features, columns[1], LABEL_NAMES, "label", _is_label_feature
        )
        return _is_list_feature(features[label])
    if kind is not None:
        return read_store(data, *columns).multi_label
    return is_label_table(data)


def _is_list_feature(feature: Any) -> bool:
    """A ``datasets`` list feature (``Sequence``, ``List``) or an Arrow list type."""
    import pyarrow as pa

    if isinstance(feature, pa.DataType):
        return bool(pa.types.is_list(feature) or pa.types.is_large_list(feature))
    return type(feature).__name__ in ("Sequence", "List", "LargeList")


def _single_samples(stored: StoredData, split: str) -> list[StoredSample]:
    records = stored.splits[split]
    samples = [
        StoredSample(
            f"{split}/{i}", _class_index(stored, value, f"{split}/{i}"), records.store, row, name
        )
        for i, (row, name, value) in enumerate(
            zip(records.rows, records.names, records.labels, strict=True)
        )
    ]
    # class by class, then by stored file name: the order a class folder lists
    return sorted(samples, key=lambda s: (s.label, s.name))


def _multi_samples(stored: StoredData, split: str) -> list[StoredMultiLabelSample]:
    records = stored.splits[split]
    samples = []
    for i, (row, name, value) in enumerate(
        zip(records.rows, records.names, records.labels, strict=True)
    ):
        target = np.zeros(len(stored.classes), dtype=np.float32)
        for item in value if isinstance(value, list) else [value]:
            target[_class_index(stored, item, f"{split}/{i}")] = 1.0
        samples.append(StoredMultiLabelSample(f"{split}/{i}", target, records.store, row, name))
    return sorted(samples, key=lambda s: s.name)


def _class_index(stored: StoredData, value: Any, sample_id: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(stored.classes):
        return value
    if str(value) in stored.classes:
        return stored.classes.index(str(value))
    raise DatasetError(
        f"{sample_id}: label {value!r} is not one of the {len(stored.classes)} classes "
        f"({', '.join(stored.classes[:10])}{', ...' if len(stored.classes) > 10 else ''})"
    )


def _validation_ids(
    data: str | Path,
    stored: StoredData,
    run_dir: str | Path | None,
    fraction: float,
    seed: int,
    train: Sequence[Any],
    labels: Any,
) -> set[str]:
    """The ids of the training samples that validate: from ``split.json``, or drawn (seeded,
    stratified as for class folders) and written there."""
    split_file = Path(run_dir) / "split.json" if run_dir is not None else None
    if split_file is not None and split_file.exists():
        saved = set(json.loads(split_file.read_text())["val"])
        missing = saved - {sample.path for sample in train}
        if missing:
            raise DatasetError(
                f"{split_file} names {len(missing)} validation sample(s) that {data} no longer "
                f"holds (first: {sorted(missing)[0]}); restore it or start a new run folder"
            )
        return saved
    if stored.multi_label:
        chosen = multilabel_split(np.asarray(labels), fraction, seed)
    else:
        chosen = stratified_split(list(labels), fraction, seed)[1]
    ids = {train[i].path for i in chosen}
    if split_file is not None:
        record = {"data": str(Path(data).resolve()), "store": stored.kind, "seed": seed}
        record.update(val_fraction=fraction, classes=stored.classes, val=sorted(ids))
        atomic_write_text(split_file, json.dumps(record, indent=1) + "\n")
    return ids
