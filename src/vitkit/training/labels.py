"""Label tables: the multi-label input of train / eval (an image path and its labels per row).

Two formats, paths relative to the table's own folder (absolute paths are kept):

- CSV with a header naming ``path`` and ``labels``; labels separated by ``;``, empty allowed
  (an image with none of the labels)::

      path,labels
      tiles/0001.png,tumor;necrosis
      tiles/0002.png,

- JSONL, one object per line: ``{"path": "tiles/0001.png", "labels": ["tumor", "necrosis"]}``
  (``labels`` may also be a ``;``-separated string, or empty / null).

A data set is one table (a seeded validation split is drawn from it and saved to the run's
split.json, as for image folders) or a folder holding ``train.csv`` (or ``.jsonl``) and optionally
``val.*`` and ``test.*``. The label names are those of the training table, sorted.

Bad rows are reported together, up front, like the unreadable images of an image folder: a
missing file, a label the model or the training table does not know, a path listed twice, a row
that cannot be parsed. Each names the table and line.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitkit.atomic_files import atomic_write_text
from vitkit.training.data import SPLIT_NAMES, DatasetError

TABLE_SUFFIXES = (".csv", ".jsonl")
LABEL_SEPARATOR = ";"


@dataclass(frozen=True, eq=False)
class MultiLabelSample:
    """One image and its multi-hot target (float32, one entry per label), as the trainer reads it."""

    path: str
    label: np.ndarray


@dataclass(frozen=True)
class TableRow:
    path: str  # resolved against the table's folder
    labels: tuple[str, ...]
    where: str  # "table.csv:12", for messages


@dataclass
class LabelTable:
    rows: list[TableRow]
    problems: list[tuple[str, str]] = field(default_factory=list)  # (where, reason)

    def report(self) -> str:
        lines = [f"{len(self.problems)} bad row(s) in label tables:"]
        lines += [f"  {where}: {reason}" for where, reason in self.problems]
        return "\n".join(lines)


# ---- reading ----------------------------------------------------------------------------------
def is_label_table(path: str | Path) -> bool:
    """A table file, or a folder holding train.csv / train.jsonl."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() in TABLE_SUFFIXES
    return path.is_dir() and find_table(path, "train") is not None


def find_table(folder: Path, split: str) -> Path | None:
    """``folder/<split>.csv`` or ``.jsonl``; both present is an error (which one is meant?)."""
    found = [folder / f"{split}{suffix}" for suffix in TABLE_SUFFIXES]
    found = [path for path in found if path.is_file()]
    if len(found) > 1:
        raise DatasetError(f"{folder}: both {found[0].name} and {found[1].name}; keep one")
    return found[0] if found else None


def read_label_table(path: str | Path, known_labels: Sequence[str] | None = None) -> LabelTable:
    """Every row of a CSV / JSONL table; bad rows go to ``problems``, not ``rows``.

    ``known_labels``: the labels a row may use (the model's, or the training table's); None
    accepts any.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such label table")
    raw = _read_csv(path) if path.suffix.lower() == ".csv" else _read_jsonl(path)
    table = LabelTable([])
    known = set(known_labels) if known_labels is not None else None
    first_seen: dict[str, str] = {}
    for where, entry in raw:
        if isinstance(entry, str):  # a parse problem
            table.problems.append((where, entry))
            continue
        relative, labels = entry
        image = relative if os.path.isabs(relative) else str(path.parent / relative)
        key = os.path.normpath(os.path.abspath(image))
        reason = _row_problem(image, labels, known, first_seen.get(key))
        if reason is not None:
            table.problems.append((where, reason))
            continue
        first_seen[key] = where
        table.rows.append(TableRow(image, labels, where))
    if not table.rows and not table.problems:
        raise DatasetError(f"{path}: the label table has no rows")
    return table


def _row_problem(
    image: str, labels: tuple[str, ...], known: set[str] | None, duplicate_of: str | None
) -> str | None:
    if duplicate_of is not None:
        return f"{image} is listed twice (first at {duplicate_of})"
    if not os.path.isfile(image):
        return f"{image}: no such file"
    unknown = sorted(set(labels) - known) if known is not None else []
    if unknown:
        return f"unknown label(s) {unknown} (known: {sorted(known or [])[:20]})"
    return None


def _split_labels(value: Any) -> tuple[str, ...] | str:
    """A row's labels from a ``;`` string or a list; a str message when neither."""
    if value is None:
        return ()
    if isinstance(value, str):
        items = value.split(LABEL_SEPARATOR)
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        items = value
    else:
        return f"labels must be a list of strings or a '{LABEL_SEPARATOR}'-separated string"
    names = [item.strip() for item in items if item.strip()]
    return tuple(dict.fromkeys(names))  # a label named twice in one row counts once


def _row(where: str, path_value: Any, labels_value: Any) -> tuple[str, Any]:
    if not isinstance(path_value, str) or not path_value.strip():
        return where, "no image path"
    labels = _split_labels(labels_value)
    if isinstance(labels, str):
        return where, labels
    return where, (path_value.strip(), labels)


def _read_csv(path: Path) -> list[tuple[str, Any]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = [name.strip().lower() for name in reader.fieldnames or []]
        if "path" not in columns or "labels" not in columns:
            raise DatasetError(
                f"{path}: a label table's header must name the columns 'path' and 'labels' "
                f"(found {reader.fieldnames}); e.g. 'path,labels' then 'img/1.png,cat;dog'"
            )
        reader.fieldnames = columns
        return [
            _row(f"{path}:{reader.line_num}", record.get("path"), record.get("labels") or "")
            for record in reader
        ]


def _read_jsonl(path: Path) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        where = f"{path}:{number}"
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            rows.append((where, f"not JSON ({error.msg})"))
            continue
        if not isinstance(record, dict):
            rows.append((where, 'expected an object like {"path": ..., "labels": [...]}'))
            continue
        rows.append(_row(where, record.get("path"), record.get("labels")))
    return rows


# ---- labels and targets -----------------------------------------------------------------------
def label_names(rows: Sequence[TableRow]) -> list[str]:
    """The sorted label names used by ``rows``."""
    return sorted({label for row in rows for label in row.labels})


def multi_hot(rows: Sequence[TableRow], labels: Sequence[str]) -> np.ndarray:
    """(rows, labels) float32 0/1 targets."""
    index = {label: i for i, label in enumerate(labels)}
    targets = np.zeros((len(rows), len(labels)), dtype=np.float32)
    for row_index, row in enumerate(rows):
        targets[row_index, [index[label] for label in row.labels]] = 1.0
    return targets


def samples(rows: Sequence[TableRow], labels: Sequence[str]) -> list[MultiLabelSample]:
    targets = multi_hot(rows, labels)
    return [MultiLabelSample(row.path, targets[i]) for i, row in enumerate(rows)]


def label_counts(targets: np.ndarray) -> np.ndarray:
    """Images per label (int64)."""
    return np.asarray(targets).sum(axis=0).astype(np.int64)


def positive_weights(targets: np.ndarray, cap: float = 100.0) -> np.ndarray:
    """BCE ``pos_weight`` per label: negatives / positives (capped), 1 for a label with none.

    With it a rare label's few positives weigh as much in the loss as its many negatives.
    """
    targets = np.asarray(targets, dtype=np.float64)
    positives = targets.sum(axis=0)
    negatives = targets.shape[0] - positives
    weights = np.ones(targets.shape[1])
    present = positives > 0
    weights[present] = np.minimum(negatives[present] / positives[present], cap)
    return weights.astype(np.float32)


def oversample_rare(targets: np.ndarray, cap: int = 10) -> list[int]:
    """Indices with images of rare labels repeated: repeat-factor sampling (LVIS, Gupta et al.,
    2019). An image is repeated ``max over its labels of sqrt(largest count / label count)``
    times (rounded, at most ``cap``); images with no label, or only the commonest, stay once.
    The square root keeps a rare label's few images from being seen a hundred times per epoch.
    """
    targets = np.asarray(targets) > 0
    counts = targets.sum(axis=0).astype(np.float64)
    factor = np.sqrt(np.where(counts > 0, counts.max() / np.maximum(counts, 1), 1.0))
    repeats = np.ones(targets.shape[0])
    labelled = targets.any(axis=1)
    repeats[labelled] = np.max(np.where(targets[labelled], factor, 0.0), axis=1)
    copies = np.clip(np.rint(repeats), 1, cap).astype(np.int64)
    return np.repeat(np.arange(targets.shape[0]), copies).tolist()  # the sampler shuffles


# ---- splits -------------------------------------------------------------------------------------
@dataclass
class TableSplits:
    labels: list[str]
    train: list[MultiLabelSample]
    val: list[MultiLabelSample]
    test: list[MultiLabelSample] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    source: str = "tables"  # "tables" (train/val/test files) or "split.json"

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    def report(self) -> str:
        return LabelTable([], self.problems).report()


def prepare_table_splits(
    data: str | Path, run_dir: str | Path | None, val_fraction: float = 0.1, seed: int = 0
) -> TableSplits:
    """The run's splits from one table (seeded split, saved to ``run_dir/split.json``) or from a
    folder's train / val / test tables. Rows of val / test with labels train lacks are bad rows."""
    data = Path(data)
    tables = (
        {"train": data}
        if data.is_file()
        else {s: p for s in SPLIT_NAMES if (p := find_table(data, s)) is not None}
    )
    if "train" not in tables:
        raise DatasetError(f"{data}: no train.csv or train.jsonl (a label table per split)")
    train_table = read_label_table(tables["train"])
    labels = label_names(train_table.rows)
    if not labels:
        raise DatasetError(f"{tables['train']}: no row names a label")
    problems = list(train_table.problems)
    read = {"train": train_table.rows}
    for split in ("val", "test"):
        if split in tables:
            table = read_label_table(tables[split], known_labels=labels)
            problems += table.problems
            read[split] = table.rows
    if "val" not in read:
        read["train"], read["val"] = _split_rows(
            read["train"], labels, tables["train"], run_dir, val_fraction, seed
        )
    return TableSplits(
        labels,
        samples(read["train"], labels),
        samples(read["val"], labels),
        samples(read.get("test", []), labels),
        problems,
        source="split.json" if data.is_file() or "val" not in tables else "tables",
    )


def _split_rows(
    rows: list[TableRow],
    labels: list[str],
    table: Path,
    run_dir: str | Path | None,
    fraction: float,
    seed: int,
) -> tuple[list[TableRow], list[TableRow]]:
    split_file = Path(run_dir) / "split.json" if run_dir is not None else None
    if split_file is not None and split_file.exists():
        saved = json.loads(split_file.read_text())
        val_paths = set(saved["val"])
        missing = val_paths - {row.path for row in rows}
        if missing:
            raise DatasetError(
                f"{split_file} names {len(missing)} validation image(s) that {table} no longer "
                f"lists (first: {sorted(missing)[0]}); restore the table or start a new run folder"
            )
    else:
        val_paths = {
            rows[i].path for i in multilabel_split(multi_hot(rows, labels), fraction, seed)
        }
        if split_file is not None:
            record = {"table": str(table.resolve()), "seed": seed, "val_fraction": fraction}
            record["val"] = sorted(val_paths)
            atomic_write_text(split_file, json.dumps(record, indent=1) + "\n")
    return [r for r in rows if r.path not in val_paths], [r for r in rows if r.path in val_paths]


def multilabel_split(targets: np.ndarray, fraction: float, seed: int) -> list[int]:
    """Validation row indices: about ``fraction`` of the rows and of every label's images (at
    least one image of any label with two or more), never every image of a label. Rarest labels
    are served first; seeded."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    targets = np.asarray(targets) > 0
    order = np.random.default_rng(seed).permutation(targets.shape[0])
    counts = targets.sum(axis=0)
    val_counts = np.zeros_like(counts)
    in_val = np.zeros(targets.shape[0], dtype=bool)

    def take(index: int) -> None:
        # only if every label of the image keeps a training image
        if not in_val[index] and np.all((counts - val_counts)[targets[index]] >= 2):
            in_val[index] = True
            val_counts[:] += targets[index]

    for label in np.argsort(counts, kind="stable"):  # rarest first
        wanted = max(round(fraction * counts[label]), 1 if counts[label] >= 2 else 0)
        for index in order[targets[order, label]]:
            if val_counts[label] >= wanted:
                break
            take(int(index))
    for index in order:  # then rows of common labels, or of none, up to the fraction
        if in_val.sum() >= round(fraction * targets.shape[0]):
            break
        take(int(index))
    return sorted(np.flatnonzero(in_val).tolist())
