"""Slide-level data: the slide table, patient-level splits and folds, bags read from Parquet.

The slide table (CSV or Parquet) has a row per slide: its id or path, its label (or, with
``multi_label``, a ';'-separated set of labels), optionally the patient and a split
(train/val/test) and an ``embeddings`` column naming the slide's ``embeddings.parquet``
directly; otherwise the slides layer finds each slide's file under ``--embeddings`` (and
embeds the slides not embedded yet) before the rows reach here.

Splits are drawn by patient, never by slide: a patient's slides all land in one split, so a
model is never tested on a patient it trained on. Without a split column, a seeded share of
patients (stratified by label) is held out for testing and another for validation; with
``--folds K`` the patients are dealt into K stratified folds, fold i is the test split of run i.
The split is written to the run folder (``split.json``) and re-read on ``--resume``.

A bag is read from its Parquet file when the loader asks for it (only the ``embedding``
column), so the archive is never held in memory: one bag at a time, whatever its size.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitkit.atomic_files import atomic_write_text
from vitkit.errors import DatasetError
from vitkit.training import data as vdata
from vitkit.training.tasks.mil_config import MILSettings

EMBEDDINGS_COLUMN = "embeddings"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SlideRow:
    """One row of the slide table."""

    slide: str
    labels: tuple[str, ...]  # one label, or the set of a multi-label slide (may be empty)
    patient: str
    split: str | None = None
    embeddings: str | None = None  # the slide's embeddings.parquet, once known


@dataclass(frozen=True)
class BagSample(vdata.Sample):
    """A bag as the trainer's evaluation sees a sample: ``path`` is the slide id."""

    embeddings: str = ""
    patient: str = ""
    target: tuple[float, ...] = field(default_factory=tuple)  # multi-hot (multi-label)


# ---- the table ------------------------------------------------------------------------------
def read_slide_table(path: str | Path, settings: MILSettings) -> list[SlideRow]:
    """The rows of a CSV or Parquet slide table; DatasetError naming the file and the fix."""
    path = Path(path)
    records = _read_records(path)
    if not records:
        raise DatasetError(f"{path}: the slide table has no rows")
    columns = set(records[0])
    for name, flag in (
        (settings.slide_column, "--slide-column"),
        (settings.label_column, "--label-column"),
    ):
        if name not in columns:
            raise DatasetError(
                f"{path}: no column {name!r} (columns: {', '.join(sorted(columns))}); name "
                f"the right one with {flag}"
            )
    rows = [_row(record, settings, path, number) for number, record in enumerate(records, 2)]
    seen: dict[str, int] = {}
    for number, row in enumerate(rows, 2):
        if row.slide in seen:
            raise DatasetError(
                f"{path}: slide {row.slide!r} is listed twice (rows {seen[row.slide]} and {number})"
            )
        seen[row.slide] = number
    return rows


def _read_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DatasetError(f"{path}: no such slide table (a CSV or Parquet file)")
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DatasetError(
                f"{path}: reading Parquet needs pyarrow: pip install 'vitkit[slides]'"
            ) from None
        return list(pq.read_table(path).to_pylist())
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return list(csv.DictReader(handle))


def _row(record: dict[str, Any], settings: MILSettings, path: Path, number: int) -> SlideRow:
    slide = _text(record.get(settings.slide_column))
    if not slide:
        raise DatasetError(f"{path}: row {number} has no {settings.slide_column!r}")
    raw = _text(record.get(settings.label_column))
    if settings.multi_label:
        labels = tuple(sorted({part.strip() for part in raw.split(";") if part.strip()}))
    else:
        if not raw:
            raise DatasetError(f"{path}: row {number} ({slide}) has no {settings.label_column!r}")
        labels = (raw,)
    split = _text(record.get(settings.split_column)) or None
    if split is not None and split not in SPLITS:
        raise DatasetError(
            f"{path}: row {number} ({slide}): split {split!r} is not one of {', '.join(SPLITS)}"
        )
    patient = _text(record.get(settings.patient_column)) or slide  # no patient: its own
    embeddings = _text(record.get(EMBEDDINGS_COLUMN)) or None
    if embeddings is not None and not Path(embeddings).is_absolute():
        embeddings = str(path.parent / embeddings)
    return SlideRow(slide, labels, patient, split, embeddings)


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def label_names(rows: Sequence[SlideRow]) -> list[str]:
    """The classes (or labels) in sorted order."""
    return sorted({label for row in rows for label in row.labels})


# ---- splits by patient ----------------------------------------------------------------------
def check_patients(rows: Sequence[SlideRow], source: str) -> None:
    """A patient whose slides the table puts in two splits is refused."""
    splits_of: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        splits_of[row.patient].add(row.split or "")
    for patient, splits in splits_of.items():
        if len(splits) > 1:
            raise DatasetError(
                f"{source}: patient {patient!r} has slides in several splits "
                f"({', '.join(sorted(s or 'none' for s in splits))}); a patient's slides must "
                "share one split"
            )


def patient_folds(rows: Sequence[SlideRow], folds: int, seed: int) -> list[list[str]]:
    """The patients dealt into ``folds`` groups, stratified by label (seeded)."""
    by_patient: dict[str, str] = {}
    for row in rows:
        by_patient.setdefault(row.patient, ";".join(row.labels))
    strata: dict[str, list[str]] = defaultdict(list)
    for patient in sorted(by_patient):
        strata[by_patient[patient]].append(patient)
    rng = np.random.default_rng(seed)
    groups: list[list[str]] = [[] for _ in range(folds)]
    offset = 0
    for key in sorted(strata):
        members = strata[key]
        order = rng.permutation(len(members))
        for position, index in enumerate(order):
            groups[(offset + position) % folds].append(members[index])
        offset += len(members)  # the next stratum continues the deal: folds stay even
    return groups


def assign_splits(
    rows: Sequence[SlideRow],
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    fold: int | None = None,
    folds: int = 1,
) -> list[SlideRow]:
    """Every row with a split: the table's own (rows without one are training rows for the
    draw), else fold ``fold`` of ``folds`` as test, else ``test_fraction`` of the patients;
    then ``val_fraction`` of the remaining patients as validation. All by patient."""
    rows = list(rows)
    if fold is not None:
        test = set(patient_folds(rows, folds, seed)[fold])
        rows = [replace(r, split="test" if r.patient in test else None) for r in rows]
    elif not any(r.split == "test" for r in rows) and test_fraction > 0:
        rows = _draw(rows, "test", test_fraction, seed)
    if not any(r.split == "val" for r in rows):
        rows = _draw(rows, "val", val_fraction, seed + 1)
    return [r if r.split else replace(r, split="train") for r in rows]


def _draw(rows: list[SlideRow], split: str, fraction: float, seed: int) -> list[SlideRow]:
    """``fraction`` of the patients of the rows without a split (at least one) get ``split``."""
    open_rows = [r for r in rows if r.split is None]
    patients = sorted({r.patient for r in open_rows})
    wanted = max(1, round(fraction * len(patients))) if patients else 0
    folds = max(2, round(len(patients) / wanted)) if wanted else 1
    chosen = set(patient_folds(open_rows, folds, seed)[0]) if wanted else set()
    return [replace(r, split=split) if r.split is None and r.patient in chosen else r for r in rows]


def write_split(path: Path, rows: Sequence[SlideRow], extra: dict[str, Any]) -> None:
    record = {
        **extra,
        "slides": {split: sorted(r.slide for r in rows if r.split == split) for split in SPLITS},
        "patients": {
            split: sorted({r.patient for r in rows if r.split == split}) for split in SPLITS
        },
    }
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")


def read_split(path: Path, rows: Sequence[SlideRow]) -> list[SlideRow]:
    """The rows with the splits of an earlier ``split.json`` (for ``--resume``)."""
    record = json.loads(path.read_text())
    split_of = {slide: split for split in SPLITS for slide in record["slides"][split]}
    missing = [r.slide for r in rows if r.slide not in split_of]
    if missing:
        raise DatasetError(
            f"{path}: written for another slide table ({len(missing)} slide(s) not in it, e.g. "
            f"{missing[0]}): use another --out"
        )
    return [replace(r, split=split_of[r.slide]) for r in rows]


# ---- bags -------------------------------------------------------------------------------------
def bag_samples(rows: Sequence[SlideRow], labels: list[str], multi_label: bool) -> list[BagSample]:
    samples = []
    for row in rows:
        if row.embeddings is None:
            raise DatasetError(f"slide {row.slide}: no embeddings file is known for it")
        if multi_label:
            target = tuple(1.0 if label in row.labels else 0.0 for label in labels)
            samples.append(BagSample(row.slide, -1, row.embeddings, row.patient, target))
        else:
            index = labels.index(row.labels[0])
            samples.append(BagSample(row.slide, index, row.embeddings, row.patient))
    return samples


def read_bag(path: str | Path) -> np.ndarray:
    """(tiles, dim) float32: the ``embedding`` column of a slide's embeddings.parquet."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=["embedding"])
    except (OSError, KeyError, ValueError) as error:
        raise DatasetError(
            f"{path}: not a tile-embedding table ({str(error).splitlines()[0][:160]}); make it "
            "with `vitkit slide --embed`"
        ) from None
    column = table.column("embedding").combine_chunks()
    if table.num_rows == 0:
        raise DatasetError(f"{path}: no tiles")
    dim = column.type.list_size
    values = np.asarray(column.values.to_numpy(zero_copy_only=False), dtype=np.float32)
    # Arrow's buffers are read-only; torch wants writable memory to own
    return (values if values.flags.writeable else values.copy()).reshape(-1, dim)


def bag_dim(path: str | Path) -> int:
    """The embedding width, from the file's schema (nothing read)."""
    import pyarrow.parquet as pq

    return int(pq.read_schema(path).field("embedding").type.list_size)


class BagDataset(vdata.ImageDataset):
    """Bags by index (or ``(index, seed)`` from the trainer's sampler): ``(tiles, dim)``
    features and the target. ``max_tiles``: a random subset of at most that many tiles, drawn
    from the sample's seed (so a resumed run draws the same), when the item carries a seed."""

    def __init__(
        self, samples: Sequence[BagSample], *, multi_label: bool, max_tiles: int | None = None
    ):
        super().__init__(samples, transform=_no_transform)
        self.bags: list[BagSample] = list(samples)
        self.multi_label = multi_label
        self.max_tiles = max_tiles

    def __getitem__(  # type: ignore[override]  # a bag's target is a tensor, not an int
        self, item: int | tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        sample = self.bags[index]
        features = read_bag(sample.embeddings)
        if self.max_tiles is not None and seed is not None and len(features) > self.max_tiles:
            rng = np.random.default_rng(seed)
            features = features[np.sort(rng.choice(len(features), self.max_tiles, replace=False))]
        if self.multi_label:
            target = torch.tensor(sample.target, dtype=torch.float32)
        else:
            target = torch.tensor(sample.label, dtype=torch.int64)
        return torch.from_numpy(features), target


def _no_transform(image: Any) -> torch.Tensor:
    raise TypeError("a bag dataset holds embeddings, not images")


def class_weight(samples: Sequence[BagSample], classes: int, multi_label: bool) -> torch.Tensor:
    """Inverse-frequency class weights (single-label: n / (classes x n_c)) or, for several
    labels, each label's negatives / positives (BCE's ``pos_weight``)."""
    if multi_label:
        targets = np.array([s.target for s in samples], dtype=np.float64).reshape(-1, classes)
        positives = targets.sum(0)
        negatives = len(targets) - positives
        return torch.tensor(negatives / np.maximum(positives, 1.0), dtype=torch.float32)
    counts = vdata.class_counts([s.label for s in samples], classes).astype(np.float64)
    weights = counts.sum() / (classes * np.maximum(counts, 1.0))
    return torch.tensor(weights, dtype=torch.float32)


def describe_counts(samples: Sequence[BagSample], labels: list[str], multi_label: bool) -> str:
    if multi_label:
        totals = np.array([s.target for s in samples]).reshape(-1, len(labels)).sum(0)
        return ", ".join(f"{label} {int(n)}" for label, n in zip(labels, totals, strict=True))
    counts = vdata.class_counts([s.label for s in samples], len(labels))
    return ", ".join(f"{label} {int(n)}" for label, n in zip(labels, counts, strict=True))


def feature_statistics(samples: Sequence[BagSample]) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation over every tile of ``samples``, one bag at a
    time (float64 sums: nothing but the current bag is held)."""
    total = squares = None
    count = 0
    for sample in samples:
        features = read_bag(sample.embeddings).astype(np.float64)
        total = features.sum(0) if total is None else total + features.sum(0)
        squares = (features**2).sum(0) if squares is None else squares + (features**2).sum(0)
        count += len(features)
    assert total is not None and squares is not None, "no training bags"
    mean = total / count
    return mean, np.sqrt(np.maximum(squares / count - mean**2, 0.0))
