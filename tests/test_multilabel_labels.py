"""Label tables (CSV / JSONL): rows, bad-row reporting, splits, rare-label weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitkit.training.data import DatasetError
from vitkit.training.labels import (
    is_label_table,
    multi_hot,
    multilabel_split,
    oversample_rare,
    positive_weights,
    prepare_table_splits,
    read_label_table,
)


def write_images(folder: Path, count: int) -> list[str]:
    from sklearn.datasets import load_digits

    digits = load_digits().images
    (folder / "img").mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(count):
        name = f"img/{index:03d}.png"
        Image.fromarray((digits[index] * 16).astype(np.uint8)).save(folder / name)
        names.append(name)
    return names


def test_csv_and_jsonl_rows_and_every_bad_row_reported(tmp_path: Path) -> None:
    names = write_images(tmp_path, 4)
    (tmp_path / "labels.csv").write_text(
        "path,labels\n"
        f"{names[0]},cat;dog\n"
        f"{names[1]},\n"  # no label at all: allowed
        f"{names[2]}, dog ; dog \n"  # spaces and a repeat
        "img/missing.png,cat\n"
        f"{names[0]},dog\n"  # listed twice
        f"{names[3]},bird\n"
    )
    table = read_label_table(tmp_path / "labels.csv", known_labels=["cat", "dog"])
    assert [(Path(r.path).name, r.labels) for r in table.rows] == [
        ("000.png", ("cat", "dog")),
        ("001.png", ()),
        ("002.png", ("dog",)),
    ]
    report = table.report()
    assert "3 bad row(s)" in report
    assert "labels.csv:5" in report and "no such file" in report
    assert "labels.csv:6" in report and "listed twice (first at" in report
    assert "labels.csv:7" in report and "unknown label(s) ['bird']" in report
    assert multi_hot(table.rows, ["cat", "dog"]).tolist() == [[1, 1], [0, 0], [0, 1]]

    lines = [
        json.dumps({"path": names[0], "labels": ["cat"]}),
        "",
        json.dumps({"path": names[1], "labels": "cat;dog"}),
        json.dumps({"path": names[2], "labels": None}),
        "{not json",
        json.dumps({"labels": ["cat"]}),
        json.dumps({"path": names[3], "labels": [1, 2]}),
    ]
    (tmp_path / "labels.jsonl").write_text("\n".join(lines) + "\n")
    table = read_label_table(tmp_path / "labels.jsonl")
    assert [r.labels for r in table.rows] == [("cat",), ("cat", "dog"), ()]
    reasons = dict(table.problems)
    assert "not JSON" in reasons[f"{tmp_path / 'labels.jsonl'}:5"]
    assert reasons[f"{tmp_path / 'labels.jsonl'}:6"] == "no image path"
    assert "list of strings" in reasons[f"{tmp_path / 'labels.jsonl'}:7"]
    (tmp_path / "bad.csv").write_text("file,tags\nx.png,a\n")
    with pytest.raises(DatasetError, match="'path' and 'labels'"):
        read_label_table(tmp_path / "bad.csv")
    assert is_label_table(tmp_path / "labels.csv") and not is_label_table(tmp_path / "img")


def test_split_covers_every_label_and_is_saved(tmp_path: Path) -> None:
    names = write_images(tmp_path, 60)
    rng = np.random.default_rng(0)
    rows = ["path,labels"]
    for index, name in enumerate(names):
        labels = [label for label, p in (("common", 0.6), ("rare", 0.08)) if rng.random() < p]
        if index < 2:
            labels.append("scarce")  # two images: one goes to val, one stays for training
        rows.append(f"{name},{';'.join(labels)}")
    (tmp_path / "all.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    run.mkdir()
    splits = prepare_table_splits(tmp_path / "all.csv", run, val_fraction=0.2, seed=1)
    assert splits.labels == ["common", "rare", "scarce"]
    train = np.stack([s.label for s in splits.train])
    val = np.stack([s.label for s in splits.val])
    assert len(splits.val) == 12 and len(splits.train) == 48
    assert (train.sum(0) >= 1).all() and (val.sum(0) >= 1).all()
    assert json.loads((run / "split.json").read_text())["seed"] == 1
    again = prepare_table_splits(tmp_path / "all.csv", run, val_fraction=0.5, seed=7)
    assert [s.path for s in again.val] == [s.path for s in splits.val]  # split.json wins
    assert multilabel_split(np.array([[1], [0], [0], [0]]), 0.5, 0) != [0]  # never all of a label


def test_folder_of_split_tables(tmp_path: Path) -> None:
    names = write_images(tmp_path, 6)
    (tmp_path / "train.csv").write_text(
        f"path,labels\n{names[0]},a\n{names[1]},b\n{names[2]},a;b\n"
    )
    (tmp_path / "val.jsonl").write_text(
        "\n".join(json.dumps({"path": n, "labels": ["a"]}) for n in names[3:5]) + "\n"
    )
    (tmp_path / "test.csv").write_text(f"path,labels\n{names[5]},c\n")  # c: not a training label
    splits = prepare_table_splits(tmp_path, None)
    assert splits.labels == ["a", "b"] and len(splits.val) == 2 and splits.test == []
    assert "unknown label(s) ['c']" in splits.report()
    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(DatasetError, match="keep one"):
        prepare_table_splits(tmp_path, None)


def test_rare_labels_weigh_more() -> None:
    targets = np.zeros((100, 3), dtype=np.float32)
    targets[:50, 0] = 1
    targets[:5, 1] = 1  # rare, and always with label 0
    weights = positive_weights(targets)
    assert weights.tolist() == [1.0, 19.0, 1.0]  # no positives: weight 1
    counts = np.bincount(oversample_rare(targets), minlength=100)
    assert (counts[:5] == 3).all()  # sqrt(50 / 5) = 3.2 copies
    assert (counts[5:50] == 1).all() and (counts[50:] == 1).all()
