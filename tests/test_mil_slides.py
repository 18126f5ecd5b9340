"""Acceptance at slide scale: generated pyramidal TIFFs (positive slides hold a pattern in about
5% of their tissue), embedded with `vitkit slide --embed`, then `vitkit mil train`: the positive
class is learned, the most attended tiles lie on the pattern, every output is written, a killed
training run resumes to the same result, and cross-validation keeps each patient in one split."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import transformers
from PIL import Image

from slide_samples import pyramid, write_tiff
from vitkit.checkpoints.mil import load_mil
from vitkit.cli import main

SIDE = 384  # level-0 pixels; 32-pixel tiles: a 12 x 12 grid
TILE = 32
PATTERN = 64  # the positive pattern: a 64 x 64 block, 4 tiles, ~5% of the tissue


def _slide_pixels(rng: np.random.Generator, pattern_at: tuple[int, int] | None) -> np.ndarray:
    """Glass, an elliptic piece of pink tissue with purple nuclei, and (positive) a block of
    dark violet stripes at ``pattern_at``."""
    canvas = np.full((SIDE, SIDE, 3), 250, dtype=np.uint8)
    y, x = np.mgrid[:SIDE, :SIDE]
    tissue = ((x - 192) / 160) ** 2 + ((y - 192) / 140) ** 2 <= 1
    pink = np.array([228, 158, 200]) + rng.normal(0, 8, (SIDE, SIDE, 3))
    canvas[tissue] = np.clip(pink[tissue], 0, 255).astype(np.uint8)
    for cy, cx in rng.integers(40, SIDE - 40, (160, 2)):
        nucleus = ((x - cx) ** 2 + (y - cy) ** 2 <= 9) & tissue
        canvas[nucleus] = (130, 70, 160)
    if pattern_at is not None:
        top, left = pattern_at
        stripes = np.where((np.arange(PATTERN) // 4) % 2 == 0, 40, 190)[:, None]
        block = np.stack([stripes + 20, stripes, stripes + 70], -1) * np.ones((1, PATTERN, 1))
        canvas[top : top + PATTERN, left : left + PATTERN] = block.astype(np.uint8)
    return canvas


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """16 slides of 8 patients (two slides each, one label per patient), two more slides never
    listed (for predict), and a tiny ViT encoder."""
    root = tmp_path_factory.mktemp("mil-slides")
    rng = np.random.default_rng(0)
    rows, regions = [], {}
    for index in range(18):
        positive = index % 2 == 1
        slide = root / f"slide{index:02d}.tif"
        corner = None
        if positive:
            corner = (int(rng.integers(3, 7)) * TILE, int(rng.integers(3, 7)) * TILE)
            regions[slide.name] = corner
        write_tiff(slide, pyramid(_slide_pixels(rng, corner), 2), mpp=0.5)
        patient = f"p{index // 4 * 2 + index % 2}"  # p0: slides 0 and 2, p1: 1 and 3, ...
        rows.append(
            {"slide": str(slide), "label": "pattern" if positive else "plain", "patient": patient}
        )
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    encoder = root / "encoder"
    transformers.ViTModel(config, add_pooling_layer=False).save_pretrained(encoder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(encoder)
    # every third slide is embedded up front by `vitkit slide --embed`; `mil train` embeds the rest
    first = [r["slide"] for r in rows[:16:3]]
    assert (
        main(
            [
                "slide",
                *first,
                "--model",
                str(encoder),
                "--embed",
                "--out",
                str(root / "emb"),
                "--no-progress",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    return {"root": root, "rows": rows, "regions": regions, "encoder": encoder}


def _table(path: Path, rows: list[dict[str, str]], splits: dict[int, str] | None = None) -> Path:
    with open(path, "w", newline="") as handle:
        fields = ["slide", "label", "patient"] + (["split"] if splits else [])
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for index, row in enumerate(rows):
            writer.writerow({**row, **({"split": splits[index]} if splits else {})})
    return path


def _train_command(table: Path, slides: dict[str, object], out: Path, *extra: str) -> list[str]:
    return [
        "mil", "train", "--data", str(table), "--embeddings", str(slides["root"] / "emb"),  # type: ignore[operator]
        "--encoder", str(slides["encoder"]), "--out", str(out), "--epochs", "14", "--lr", "5e-3",
        "--hidden-dim", "64", "--attention-dim", "16", "--dropout", "0", "--seed", "3",
        "--no-progress", "--device", "cpu", "--bootstrap", "200", *extra,
    ]  # fmt: skip


def test_the_pattern_is_learned_and_attended(slides: dict[str, object], tmp_path: Path) -> None:
    rows = slides["rows"][:16]  # type: ignore[index]
    # by patient: p0-p3 (slides 0-7) train, p4-p5 (8-11) validate, p6-p7 (12-15) test
    split = {i: "train" if i < 8 else "val" if i < 12 else "test" for i in range(16)}
    table = _table(tmp_path / "slides.csv", rows, split)
    out = tmp_path / "run"
    torch.set_num_threads(1)
    assert main(_train_command(table, slides, out)) == 0
    metrics = json.loads((out / "test" / "metrics.json").read_text())
    assert metrics["auc"] == 1.0 and metrics["balanced_accuracy"] == 1.0, metrics
    assert metrics["ci95"]["auc"] == [1.0, 1.0]
    emb = slides["root"] / "emb"  # type: ignore[operator]
    assert all((emb / f"slide{i:02d}" / "embeddings.parquet").is_file() for i in range(16))
    model = load_mil(out / "best")
    assert model.encoder["model"] == str(Path(slides["encoder"]).resolve())  # type: ignore[arg-type]
    assert model.tiling["min_tissue"] == 0.5 and model.labels == ["pattern", "plain"]

    # a new positive slide, from its file alone: embedded as the training slides were
    new = slides["root"] / "slide17.tif"  # type: ignore[operator]
    pred = tmp_path / "pred"
    assert (
        main(
            [
                "mil",
                "predict",
                str(new),
                str(emb / "slide16"),
                "--model",
                str(out / "best"),
                "--out",
                str(pred),
                "--top-k",
                "4",
            ]
        )
        == 1
    )  # slide16 was never embedded: reported, not fatal
    folder = pred / "slide17"
    prediction = json.loads((folder / "prediction.json").read_text())
    assert prediction["predicted"] == ["pattern"] and prediction["probabilities"]["pattern"] > 0.5
    tiles = pq.read_table(folder / "tiles.parquet").to_pandas()
    assert tiles["attention"].sum() == pytest.approx(1.0, abs=1e-5)
    top, left = slides["regions"]["slide17.tif"]  # type: ignore[index]
    best = tiles.nlargest(4, "attention")
    on_pattern = (
        (best["x"] >= left)
        & (best["x"] < left + PATTERN)
        & (best["y"] >= top)
        & (best["y"] < top + PATTERN)
    )
    assert on_pattern.iloc[0] and on_pattern.sum() >= 3, best
    geojson = json.loads((folder / "attention.geojson").read_text())
    assert len(geojson["features"]) == len(tiles)
    measured = geojson["features"][int(best.index[0])]["properties"]["measurements"]
    assert measured["attention"] == pytest.approx(best["attention"].iloc[0])
    assert measured["attention_percentile"] > 0.95  # the pattern's tiles tie at the top
    heatmap = Image.open(folder / "heatmap-attention.png")
    thumbnail = Image.open(folder / "thumbnail.png")
    assert heatmap.width == thumbnail.width and heatmap.height > thumbnail.height
    assert Image.open(folder / "gallery.png").height > 2 * 112
    assert "slide17" in (pred / "predictions.csv").read_text()

    # eval on the table's test rows gives the training run's test report
    ev = tmp_path / "eval"
    assert (
        main(
            [
                "mil",
                "eval",
                "--model",
                str(out / "best"),
                "--data",
                str(table),
                "--embeddings",
                str(emb),
                "--split",
                "test",
                "--out",
                str(ev),
                "--bootstrap",
                "200",
            ]
        )
        == 0
    )
    assert json.loads((ev / "metrics.json").read_text())["auc"] == metrics["auc"]


def _finished_epochs(out: Path) -> int:
    path = out / "last.pt"
    return int(torch.load(path, weights_only=True)["epoch"]) if path.exists() else 0


def test_a_killed_run_resumes_to_the_same_result(slides: dict[str, object], tmp_path: Path) -> None:
    rows = slides["rows"][:16]  # type: ignore[index]
    table = _table(tmp_path / "slides.csv", rows)
    torch.set_num_threads(1)
    short = ("--epochs", "5")  # the result must be equal, not good
    assert main(_train_command(table, slides, tmp_path / "whole", *short)) == 0
    out = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    process = subprocess.Popen(
        [sys.executable, "-m", "vitkit", *_train_command(table, slides, out, *short)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while _finished_epochs(out) < 2:
        assert process.poll() is None, (
            process.stderr.read().decode()[-2000:] if process.stderr else ""
        )
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = _finished_epochs(out)
    assert 2 <= killed_at < 5, f"not killed mid-way (epoch {killed_at})"
    assert main(_train_command(table, slides, out, *short, "--resume")) == 0
    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    resumed = torch.load(out / "last.pt", weights_only=True)
    assert all(torch.equal(whole["model"][k], resumed["model"][k]) for k in whole["model"])
    assert [r["val_loss"] for r in whole["history"] if r["type"] == "epoch"] == [
        r["val_loss"] for r in resumed["history"] if r["type"] == "epoch"
    ]
    for name in ("metrics.json", "predictions.csv"):
        assert (out / "test" / name).read_text() == (tmp_path / "whole" / "test" / name).read_text()
    assert json.loads((out / "split.json").read_text()) == json.loads(
        (tmp_path / "whole" / "split.json").read_text()
    )


def test_cross_validation_by_patient(slides: dict[str, object], tmp_path: Path) -> None:
    rows = slides["rows"][:16]  # type: ignore[index]
    table = _table(tmp_path / "slides.csv", rows)
    out = tmp_path / "cv"
    # a tiling other than the embedded slides' is refused before any work
    assert main(_train_command(table, slides, out, "--tile-size", "64")) == 1
    assert not (out / "last.pt").exists()
    command = _train_command(
        table,
        slides,
        out,
        "--folds",
        "4",
        "--epochs",
        "3",
        "--mil-model",
        "clam_sb",
        "--clam-k",
        "2",
    )
    assert main(command) == 0
    summary = json.loads((out / "cv_summary.json").read_text())
    assert len(summary["folds"]) == 4 and set(summary["auc"]) == {"mean", "std"}
    assert all(fold["num_slides"] == 4 for fold in summary["folds"])
    tested: list[str] = []
    for fold in range(4):
        split = json.loads((out / f"fold-{fold}" / "split.json").read_text())
        sets = [set(split["patients"][name]) for name in ("train", "val", "test")]
        assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
        tested += split["patients"]["test"]
    assert sorted(tested) == sorted({r["patient"] for r in rows})  # each patient tested once
    lines = (out / "cv_summary.csv").read_text().splitlines()
    assert lines[0].startswith("fold,auc,balanced_accuracy,macro_f1") and lines[-2].startswith(
        "mean,"
    )
