"""`vitkit slide` and ``vitkit.slides.run_slide`` end to end, on slides made at test time.

Exactness is checked against `vitkit predict` on the same crops saved as PNG files (the
command a user would trust), at level 0, at a lower level, through OpenSlide, and at an mpp
between two levels (tiles resized by the checkpoint's processor).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import openslide  # noqa: F401  (a .[dev] package: missing must fail)
import pyarrow.parquet as pq
import pytest
from PIL import Image

import slide_samples as samples
import vitkit
from vitkit.cli import main
from vitkit.slides import SlideSettings, run_slide

TILE = 64  # the tiny test model's input size
FAST = {"thumbnail_side": 512, "batch_size": 8}


@pytest.fixture(scope="module")
def mosaic() -> tuple[list[np.ndarray], list[samples.Placed]]:
    pixels, placed = samples.mosaic()
    return samples.pyramid(pixels), placed


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory, mosaic: tuple) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("slides")
    levels = mosaic[0]
    return {
        "tif": samples.write_tiff(folder / "mosaic.tif", levels),
        "svs": samples.write_svs(folder / "mosaic.svs", levels),
    }


@pytest.fixture(scope="module")
def classifier(tiny_hf_classifier: Path) -> vitkit.Classifier:
    return vitkit.load(tiny_hf_classifier, device="cpu")


def read_table(folder: Path) -> dict[str, np.ndarray]:
    table = pq.read_table(folder / "tiles.parquet")
    return {name: table.column(name).to_numpy() for name in table.column_names}


def predict_crops(
    capsys: pytest.CaptureFixture[str], model: Path, crops: list[np.ndarray], folder: Path
) -> np.ndarray:
    """`vitkit predict` on the crops saved as PNG: (N, classes) probabilities by label order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, crop in enumerate(crops):
        paths.append(folder / f"crop-{index:03d}.png")
        Image.fromarray(crop).save(paths[-1])
    capsys.readouterr()
    assert main(["predict", *map(str, paths), "--model", str(model), "-k", "99", "-f", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    labels = vitkit.load(model).labels
    return np.array(
        [
            [{p["label"]: p["score"] for p in r["predictions"]}[label] for label in labels]
            for r in records
        ]
    )


@pytest.mark.parametrize(
    ("kind", "settings", "level"),
    [
        ("tif", {"level": 0}, 0),
        ("tif", {"level": 1, "stride": 48}, 1),  # a lower level, overlapping tiles
        ("svs", {"level": 0}, 0),  # through OpenSlide
        ("tif", {"mpp": 0.75}, 1),  # between levels: 96-px regions of level 1, resized to 64
    ],
)
def test_tile_probabilities_equal_vitkit_predict_on_the_crop(
    kind: str,
    settings: dict,
    level: int,
    slides: dict[str, Path],
    mosaic: tuple,
    classifier: vitkit.Classifier,
    tiny_hf_classifier: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    result = run_slide(
        slides[kind], classifier, tmp_path / "out", SlideSettings(**settings, **FAST)
    )
    table = read_table(result.out_dir)
    assert result.summary["tiles"]["level"] == level and len(table["x"]) == result.tiles >= 8
    downsample = 2**level
    read_size = result.summary["tiles"]["read_size"]
    # a spread of tiles, the one nearest the bottom-right corner included (white-padded)
    rows = sorted({*range(0, len(table["x"]), 9), int(np.argmax(table["x"] + table["y"]))})
    crops = [
        samples.crop(
            mosaic[0][level],
            int(table["x"][i]) // downsample,
            int(table["y"][i]) // downsample,
            read_size,
        )
        for i in rows
    ]
    expected = predict_crops(capsys, tiny_hf_classifier, crops, tmp_path / "crops")
    ours = np.stack([table[f"prob_{label}"][rows] for label in classifier.labels], axis=1)
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)
    assert (table["width"] == read_size * downsample).all()


def test_outputs_agree_with_each_other(
    slides: dict[str, Path], classifier: vitkit.Classifier, tmp_path: Path
) -> None:
    result = run_slide(slides["tif"], classifier, tmp_path / "out", SlideSettings(**FAST))
    folder = result.out_dir
    table = read_table(folder)
    labels = classifier.labels
    import csv

    with open(folder / "tiles.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["x"]) for r in rows] == table["x"].tolist()
    for label in labels:
        np.testing.assert_allclose(
            [float(r[f"prob_{label}"]) for r in rows], table[f"prob_{label}"], rtol=1e-6
        )
    probabilities = np.stack([table[f"prob_{label}"] for label in labels], axis=1)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert list(table["top_class"]) == [labels[i] for i in probabilities.argmax(axis=1)]

    features = json.loads((folder / "tiles.geojson").read_text())["features"]
    assert len(features) == len(table["x"])
    first = features[0]
    x, y, size = int(table["x"][0]), int(table["y"][0]), int(table["width"][0])
    assert first["geometry"]["coordinates"][0] == [
        [x, y],
        [x + size, y],
        [x + size, y + size],
        [x, y + size],
        [x, y],
    ]
    assert first["properties"]["objectType"] == "tile"
    assert first["properties"]["classification"]["name"] == table["top_class"][0]

    summary = json.loads((folder / "summary.json").read_text())
    assert summary["complete"] and summary["tiles"]["run"] == len(table["x"])
    shares = [summary["classes"][label]["share"] for label in labels]
    assert sum(shares) == pytest.approx(1, abs=1e-5)
    assert 0.01 < summary["tissue"]["area_mm2"] < 0.1  # 1300x1000 px at 0.25 µm: 0.08 mm²
    assert summary["model"]["name"] == classifier.name
    thumbnail = Image.open(folder / "thumbnail.png")
    for label in labels:
        heat = Image.open(folder / f"heatmap-{label.replace(' ', '_')}.png")
        assert heat.width == thumbnail.width and heat.height > thumbnail.height
    assert not (folder / ".vitkit-work").exists()


def test_embeddings_equal_classifier_embed_on_the_crops(
    slides: dict[str, Path], mosaic: tuple, tiny_hf_feature_extractor: Path, tmp_path: Path
) -> None:
    extractor = vitkit.load(tiny_hf_feature_extractor, device="cpu")
    settings = SlideSettings(embed=True, pool="mean", **FAST)
    result = run_slide(slides["tif"], extractor, tmp_path / "out", settings)
    table = pq.read_table(result.out_dir / "embeddings.parquet")
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    x, y = table.column("x").to_numpy(), table.column("y").to_numpy()
    crops = [samples.crop(mosaic[0][0], int(x[i]), int(y[i]), TILE) for i in range(0, len(x), 7)]
    expected = extractor.embed(crops, pool="mean")
    np.testing.assert_allclose(vectors[::7], expected, atol=1e-5)
    assert result.summary["classes"] == {}
    assert not list(result.out_dir.glob("heatmap-*.png"))  # no head: nothing to map


# ---- the command ---------------------------------------------------------------------------------
def test_many_slides_bad_ones_reported_the_rest_done(
    slides: dict[str, Path],
    tiny_hf_classifier: Path,
    tiny_hf_feature_extractor: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = {
        "notes.svs": b"not a slide\n",
        "cut.tif": slides["tif"].read_bytes()[:60_000],
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    blank = np.full((300, 400, 3), 250, dtype=np.uint8)
    samples.write_tiff(tmp_path / "blank.tif", [blank])
    inputs = [str(tmp_path / n) for n in ("notes.svs", "cut.tif", "blank.tif")] + [
        str(slides["tif"])
    ]
    out = tmp_path / "out"
    args = ["slide", *inputs, "--model", str(tiny_hf_classifier), "--out", str(out)]
    code = main([*args, "--batch-size", "8", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len([line for line in err if "vitkit slide: " + str(tmp_path) in line]) == 3
    assert any("notes.svs: not a slide format" in line for line in err)
    assert any("cut.tif: truncated" in line for line in err)
    assert any("blank.tif: no tissue found" in line for line in err)
    assert err[-1] == f"1 of 4 slides done -> {out}"
    assert sorted(p.name for p in out.iterdir()) == ["mosaic"]  # nothing for the bad ones
    assert (out / "mosaic" / "summary.json").is_file()

    again = ["slide", str(slides["tif"]), *args[-4:], "--batch-size", "8", "--workers", "1"]
    assert main(again) == 0  # the same results asked for again (other workers): nothing to do
    assert "already complete" in capsys.readouterr().err

    headless = ["slide", str(slides["tif"]), "--model", str(tiny_hf_feature_extractor)]
    assert main([*headless, "--out", str(tmp_path / "emb")]) == 1
    assert "has no classification head: run it with --embed" in capsys.readouterr().err
    assert (
        main(
            [
                "slide",
                str(slides["tif"]),
                "--model",
                str(tiny_hf_classifier),
                "--out",
                str(out),
                "--mpp",
                "0.1",
            ]
        )
        == 1
    )
    assert "finest level is 0.25" in capsys.readouterr().err


def test_resume_after_sigkill_gives_the_same_outputs(
    slides: dict[str, Path],
    classifier: vitkit.Classifier,
    tiny_hf_classifier: Path,
    tmp_path: Path,
) -> None:
    options = {"min_tissue": 0.25, "embed": True, "shard_tiles": 16, **FAST}  # ~8 files of 16
    reference = run_slide(slides["tif"], classifier, tmp_path / "whole", SlideSettings(**options))
    folder = tmp_path / "killed"
    # The child's progress callback naps after each batch, so the kill lands part-way through
    # however fast the machine runs the tiny model; the library runs as it always does.
    code = (
        "import time, vitkit\n"
        "from vitkit.slides import SlideSettings, run_slide\n"
        f"run_slide({str(slides['tif'])!r}, vitkit.load({str(tiny_hf_classifier)!r}, device='cpu'),"
        f" {str(folder)!r}, SlideSettings(**{options!r}), progress=lambda d, n: time.sleep(0.1))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", code], env=env)
    work = folder / ".vitkit-work"
    deadline = time.monotonic() + 120
    while not list(work.glob("shard-*.npz")) and time.monotonic() < deadline:
        assert child.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    shards = len(list(work.glob("shard-*.npz")))
    assert 0 < shards < reference.tiles / 16 and not (folder / "summary.json").exists()

    resumed = run_slide(slides["tif"], classifier, folder, SlideSettings(**options))
    assert 0 < resumed.tiles_run < reference.tiles == resumed.tiles
    for name in ("tiles.parquet", "embeddings.parquet"):
        assert pq.read_table(folder / name).equals(pq.read_table(reference.out_dir / name))
    for name in ("tiles.csv", "tiles.geojson", "thumbnail.png", "heatmap-tench.png"):
        assert (folder / name).read_bytes() == (reference.out_dir / name).read_bytes(), name
    ours = json.loads((folder / "summary.json").read_text())
    theirs = json.loads((reference.out_dir / "summary.json").read_text())
    assert ours["timing"]["tiles_resumed"] > 0
    ours.pop("timing"), theirs.pop("timing")
    assert ours["manifest"]["slide"] == theirs["manifest"]["slide"]
    ours.pop("manifest"), theirs.pop("manifest")
    assert ours == theirs


def test_a_finished_slide_is_redone_for_another_model_arg(
    slides: dict[str, Path], classifier: vitkit.Classifier, tiny_hf_classifier: Path, tmp_path: Path
) -> None:
    """--model-arg changes the network (here: the head reads the mean patch token), so work on
    disk from the model without it is not reused: the slide is planned afresh."""
    from vitkit.slides import prepare_slide

    out = tmp_path / "out"
    run_slide(slides["tif"], classifier, out, SlideSettings(**FAST))
    assert prepare_slide(slides["tif"], classifier, out, SlideSettings(**FAST)).complete
    pooled = vitkit.load(tiny_hf_classifier, device="cpu", overrides={"global_pool": "avg"})
    again = prepare_slide(slides["tif"], pooled, out, SlideSettings(**FAST))
    assert not again.complete and again.tiles_done == 0
