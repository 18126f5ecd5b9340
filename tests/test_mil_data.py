"""Slide tables, patient-level splits and folds, bags read from Parquet, and the slide metrics
against scikit-learn."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from vitkit.errors import DatasetError
from vitkit.training.tasks.mil_config import MILSettings
from vitkit.training.tasks.mil_data import (
    BagDataset,
    BagSample,
    SlideRow,
    assign_splits,
    check_patients,
    patient_folds,
    read_bag,
    read_slide_table,
)
from vitkit.training.tasks.mil_eval import bootstrap_intervals, slide_metrics


def _write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _rows(patients: int, slides_per_patient: int = 2) -> list[SlideRow]:
    rng = np.random.default_rng(3)
    rows = []
    for patient in range(patients):
        label = "tumor" if rng.random() < 0.3 else "normal"
        for slide in range(slides_per_patient):
            rows.append(SlideRow(f"p{patient}-s{slide}", (label,), f"p{patient}"))
    return rows


def test_csv_and_parquet_tables_read_alike(tmp_path: Path) -> None:
    records = [
        {"slide": "a.svs", "diagnosis": "tumor", "patient": "p1", "split": "train"},
        {"slide": "b.svs", "diagnosis": "normal", "patient": "p2", "split": "test"},
    ]
    settings = MILSettings(label_column="diagnosis")
    from_csv = read_slide_table(_write_csv(tmp_path / "t.csv", records), settings)
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "t.parquet")
    from_parquet = read_slide_table(tmp_path / "t.parquet", settings)
    assert from_csv == from_parquet
    assert from_csv[1] == SlideRow("b.svs", ("normal",), "p2", "test", None)


def test_bad_tables_are_refused_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    table = _write_csv(tmp_path / "t.csv", [{"slide": "a", "label": "x"}])
    with pytest.raises(DatasetError, match=r"t\.csv: no column 'diagnosis'.*--label-column"):
        read_slide_table(table, MILSettings(label_column="diagnosis"))
    twice = _write_csv(tmp_path / "twice.csv", [{"slide": "a", "label": "x"}] * 2)
    with pytest.raises(DatasetError, match="listed twice"):
        read_slide_table(twice, MILSettings())
    straddling = [SlideRow("a", ("x",), "p1", "train"), SlideRow("b", ("x",), "p1", "test")]
    with pytest.raises(DatasetError, match="patient 'p1' has slides in several splits"):
        check_patients(straddling, "t.csv")


def test_multi_label_rows_hold_label_sets(tmp_path: Path) -> None:
    table = _write_csv(
        tmp_path / "t.csv", [{"slide": "a", "label": "msi; braf"}, {"slide": "b", "label": ""}]
    )
    rows = read_slide_table(table, MILSettings(multi_label=True))
    assert rows[0].labels == ("braf", "msi") and rows[1].labels == ()
    assert rows[0].patient == "a"  # no patient column: each slide is its own patient


@pytest.mark.parametrize("seed", range(5))
def test_no_patient_is_in_two_splits(seed: int) -> None:
    rows = assign_splits(_rows(40, 3), val_fraction=0.2, test_fraction=0.25, seed=seed)
    splits_of: dict[str, set[str]] = {}
    for row in rows:
        splits_of.setdefault(row.patient, set()).add(str(row.split))
    assert all(len(s) == 1 for s in splits_of.values())
    patients = {s: {r.patient for r in rows if r.split == s} for s in ("train", "val", "test")}
    assert len(patients["test"]) == 10 and len(patients["val"]) == 6  # 25% of 40, 20% of 30
    check_patients(rows, "table")


def test_folds_partition_the_patients_stratified_by_label() -> None:
    rows = _rows(50)
    folds = patient_folds(rows, 5, seed=1)
    everyone = [p for fold in folds for p in fold]
    assert sorted(everyone) == sorted({r.patient for r in rows}) and len(everyone) == 50
    tumor = {r.patient for r in rows if r.labels == ("tumor",)}
    per_fold = [len(tumor & set(fold)) for fold in folds]
    assert (
        max(per_fold) - min(per_fold) <= 1
        and max(len(f) for f in folds) - min(len(f) for f in folds) <= 1
    )
    for fold in range(5):
        split = assign_splits(rows, val_fraction=0.1, test_fraction=0.2, seed=1, fold=fold, folds=5)
        assert {r.patient for r in split if r.split == "test"} == set(folds[fold])
        check_patients(split, "table")


def test_bags_are_read_from_parquet_and_sampled_reproducibly(tmp_path: Path) -> None:
    vectors = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 6)
    pq.write_table(
        pa.table({"x": np.arange(50), "y": np.arange(50), "embedding": column}),
        tmp_path / "e.parquet",
    )
    np.testing.assert_array_equal(read_bag(tmp_path / "e.parquet"), vectors)
    sample = BagSample("s", 1, str(tmp_path / "e.parquet"), "p")
    dataset = BagDataset([sample], multi_label=False, max_tiles=8)
    whole, target = dataset[0]  # evaluation: every tile
    assert whole.shape == (50, 6) and int(target) == 1
    first, again, other = dataset[(0, 11)][0], dataset[(0, 11)][0], dataset[(0, 12)][0]
    assert (
        first.shape == (8, 6) and np.array_equal(first, again) and not np.array_equal(first, other)
    )
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DatasetError, match=r"bad\.parquet: not a tile-embedding table"):
        read_bag(tmp_path / "bad.parquet")


def test_metrics_are_scikit_learns() -> None:
    rng = np.random.default_rng(5)
    binary = rng.integers(0, 2, 60)
    scores = np.clip(binary * 0.3 + rng.random(60) * 0.7, 0, 1)
    probabilities = np.stack([1 - scores, scores], 1)
    ours = slide_metrics(binary, probabilities, multi_label=False)
    assert ours["auc"] == pytest.approx(roc_auc_score(binary, scores))
    predicted = probabilities.argmax(1)
    assert ours["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(binary, predicted))
    assert ours["macro_f1"] == pytest.approx(f1_score(binary, predicted, average="macro"))

    three = rng.integers(0, 3, 80)
    logits = rng.normal(size=(80, 3)) + np.eye(3)[three]
    softmax = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ours = slide_metrics(three, softmax, multi_label=False)
    assert ours["auc"] == pytest.approx(
        roc_auc_score(three, softmax, multi_class="ovr", average="macro")
    )
    assert ours["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(three, softmax.argmax(1))
    )
    assert ours["macro_f1"] == pytest.approx(f1_score(three, softmax.argmax(1), average="macro"))

    truth = rng.integers(0, 2, (70, 4))
    sigmoid = np.clip(truth * 0.4 + rng.random((70, 4)) * 0.6, 0, 1)
    ours = slide_metrics(truth, sigmoid, multi_label=True)
    assert ours["auc"] == pytest.approx(roc_auc_score(truth, sigmoid, average="macro"))
    decided = (sigmoid >= 0.5).astype(int)
    assert ours["macro_f1"] == pytest.approx(
        f1_score(truth, decided, average="macro", zero_division=0)
    )
    per_label = [balanced_accuracy_score(truth[:, i], decided[:, i]) for i in range(4)]
    assert ours["balanced_accuracy"] == pytest.approx(np.mean(per_label))


def test_bootstrap_intervals_bracket_the_estimate() -> None:
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 2, 100)
    scores = np.clip(truth * 0.35 + rng.random(100) * 0.65, 0, 1)
    probabilities = np.stack([1 - scores, scores], 1)
    point = slide_metrics(truth, probabilities, multi_label=False)
    intervals = bootstrap_intervals(truth, probabilities, False, resamples=300, seed=0)
    for name in ("auc", "balanced_accuracy", "macro_f1"):
        low, high = intervals[name]
        assert low < point[name] < high and high - low < 0.35
    assert intervals == bootstrap_intervals(truth, probabilities, False, resamples=300, seed=0)
