"""`vitkit slide` with a segmentation model: tile masks stitched into a slide mask that covers
the tissue, with no seam at tile borders (overlap blending), QuPath polygons, areas in µm², and
the same mask after a SIGKILL and a rerun. The model has a known answer: "tissue" wherever an
8x8 patch is darker than 80% white (its weights are set by hand), so the mask can be checked
against the slide's own pixels."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import measure

import slide_samples as samples
from vitkit.checkpoints import save_model
from vitkit.cli import main
from vitkit.inference.segmentation import SegmentationRunner
from vitkit.models.config import ViTConfig
from vitkit.models.segmentation import Segmenter, SegmenterConfig
from vitkit.slides import SlideSettings, run_slide
from vitkit.slides.seg_outputs import BandStitcher, MaskGeometry, class_polygons
from vitkit.slides.seg_tiles import SegmentationTiles

THRESHOLD = 0.8
# resume needs no overlap: whole tiles, the tissue only (fewer tiles than the cover test's)
OPTIONS = {"min_tissue": 0.5, "mask_level": 1, "thumbnail_side": 256}


def brightness_segmenter() -> Segmenter:
    """A linear-head segmenter whose class 1 ("tissue") is an 8x8 patch darker than THRESHOLD:
    the patch embedding computes the patch mean less the threshold, the one block adds nothing,
    and the 1x1 classifier reads the sign after the LayerNorm."""
    backbone = ViTConfig(
        hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8,
        image_size=64, patch_size=8, layer_norm_eps=1e-6,
    )  # fmt: skip
    config = SegmenterConfig(backbone, head="linear", id2label={0: "background", 1: "tissue"})
    model = Segmenter(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        network = model.backbone
        mean = torch.full((3, 8, 8), 1.0 / (3 * 64))
        level = 2 * THRESHOLD - 1  # the threshold after normalisation (mean = std = 0.5)
        network.patch_embed.proj.weight[0], network.patch_embed.proj.weight[1] = mean, -mean
        network.patch_embed.proj.bias[0], network.patch_embed.proj.bias[1] = -level, level
        for norm in (network.blocks[0].norm1, network.blocks[0].norm2, network.norm):
            norm.weight.fill_(1.0)
        model.decoder.batch_norm.weight.fill_(1.0)
        model.decoder.batch_norm.running_var.fill_(1.0)
        model.decoder.classifier.weight[0, 0, 0, 0] = 4.0
        model.decoder.classifier.weight[1, 0, 0, 0] = -4.0
    return model.eval()


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    folder = tmp_path_factory.mktemp("seg-slide")
    pixels, _ = samples.mosaic()
    levels = samples.pyramid(pixels)
    model = save_model(brightness_segmenter(), folder / "model")
    return samples.write_tiff(folder / "mosaic.tif", levels), model, levels[1]


def test_blending_leaves_no_seam_where_tiles_disagree_at_their_borders() -> None:
    """Tiles cut from one smooth field, each wrong in a 3-pixel rim (a model without context
    there): blended, the field's arg-max comes back everywhere; last-tile-wins shows the rims."""
    height, width, side, stride = 70, 90, 16, 8
    rows, cols = np.mgrid[0:height, 0:width]
    field = np.stack([np.sin(rows / 9.0) + np.cos(cols / 7.0), np.zeros((height, width))])
    expected = field.argmax(0)
    blended = np.full((height, width), 7, dtype=np.uint8)
    naive = np.full((height, width), 7, dtype=np.uint8)

    def sink(first: int, finished: np.ndarray) -> None:
        blended[first : first + len(finished)] = finished

    stitcher = BandStitcher(2, width, height, side, sink)
    for top in range(0, height - side + stride, stride):
        for left in range(0, width - side + stride, stride):
            tile = np.zeros((2, side, side), dtype=np.float32)
            crop = field[:, top : top + side, left : left + side]
            tile[:, : crop.shape[1], : crop.shape[2]] = crop
            rim = np.ones((side, side), dtype=bool)
            rim[3:-3, 3:-3] = False
            tile[:, rim] = tile[::-1][:, rim]  # the rim says the opposite class
            stitcher.add(top, left, tile)
            naive[top : top + side, left : left + side] = tile.argmax(0)[
                : height - top, : width - left
            ]
    stitcher.finish()
    # away from the slide's own edge (one tile there, rim and all) and from where the two
    # classes tie (a blend of near-equal scores may go either way)
    clear = np.zeros((height, width), dtype=bool)
    clear[3:-3, 3:-3] = True
    clear &= np.abs(field[0] - field[1]) > 0.2
    assert np.array_equal(blended[clear], expected[clear])
    assert (naive[clear] != expected[clear]).mean() > 0.05


def test_slide_mask_covers_the_tissue_with_areas_and_polygons(
    slide: tuple[Path, Path, np.ndarray], tmp_path: Path
) -> None:
    path, model, level1 = slide
    argv = ["slide", str(path), "--model", str(model), "--out", str(tmp_path), "--no-progress"]
    argv += ["--stride", "32", "--min-tissue", "0.1", "--mask-level", "1"]
    assert main(argv) == 0
    folder = tmp_path / "mosaic"
    mask = np.load(folder / "mask.npy")
    assert mask.shape == level1.shape[:2]  # the mask level's own grid
    run = mask != 255
    # the known answer, from the pixels: patch means on the 8x8 grid of level 0 (4x4 here)
    dark = level1.mean(axis=2) / 255 < THRESHOLD
    smooth = measure.block_reduce(dark, (4, 4), np.mean).repeat(4, 0).repeat(4, 1)
    certain = (np.abs(smooth - 0.5) > 0.45)[: mask.shape[0], : mask.shape[1]] & run
    agreement = ((mask == 1) == (smooth > 0.5)[: mask.shape[0], : mask.shape[1]])[certain]
    assert agreement.mean() > 0.99
    for picture in samples.mosaic()[1]:  # every placed picture is covered by the tiles run
        top, left = picture.y // 2 + 8, picture.x // 2 + 8
        inside = run[
            top : (picture.y + picture.height) // 2 - 8, left : (picture.x + picture.width) // 2 - 8
        ]
        assert inside.mean() > 0.99, picture.name
    summary = json.loads((folder / "summary.json").read_text())
    tissue = summary["mask"]["classes"]["tissue"]
    assert tissue["pixels"] == int((mask == 1).sum())
    assert tissue["area_um2"] == pytest.approx(tissue["pixels"] * (0.25 * 2) ** 2)
    features = json.loads((folder / "classes.geojson").read_text())["features"]
    names = {f["properties"]["classification"]["name"] for f in features}
    assert names == {"background", "tissue"}


def test_polygons_keep_holes_in_level0_coordinates() -> None:
    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[5:35, 5:35] = 1
    mask[15:25, 15:25] = 0  # a hole
    geometry = MaskGeometry(level=1, downsample=4.0, factor=1.0, width=40, height=40, tile=8)
    features = class_polygons(mask, ["glass", "tissue"], geometry)["features"]
    tissue = [f for f in features if f["properties"]["classification"]["name"] == "tissue"]
    assert len(tissue) == 1
    outer, *holes = tissue[0]["geometry"]["coordinates"]
    assert len(holes) == 1
    xs = [x for x, _ in outer]
    assert min(xs) == pytest.approx(5 * 4, abs=4) and max(xs) == pytest.approx(35 * 4, abs=4)


def test_sigkill_and_rerun_give_the_same_mask(
    slide: tuple[Path, Path, np.ndarray], tmp_path: Path
) -> None:
    path, model, _ = slide
    settings = SlideSettings(**OPTIONS, shard_tiles=16, batch_size=8)
    runner = SegmentationTiles(SegmentationRunner.from_pretrained(str(model)), str(model))
    reference = run_slide(path, runner, tmp_path / "whole", settings)
    folder = tmp_path / "killed"
    code = (
        "import time\n"
        "from vitkit.inference.segmentation import SegmentationRunner\n"
        "from vitkit.slides import SlideSettings, run_slide\n"
        "from vitkit.slides.seg_tiles import SegmentationTiles\n"
        f"runner = SegmentationTiles(SegmentationRunner.from_pretrained({str(model)!r}), {str(model)!r})\n"
        f"run_slide({str(path)!r}, runner, {str(folder)!r}, SlideSettings(**{OPTIONS!r}, "
        "shard_tiles=16, batch_size=8), progress=lambda d, n: time.sleep(0.1))\n"
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
    assert not (folder / "summary.json").exists()
    resumed = run_slide(path, runner, folder, settings)
    assert 0 < resumed.tiles_run < reference.tiles
    assert np.array_equal(np.load(folder / "mask.npy"), np.load(reference.out_dir / "mask.npy"))
    for name in ("mask.png", "classes.geojson", "mask-overlay.png", "tiles.csv"):
        assert (folder / name).read_bytes() == (reference.out_dir / name).read_bytes(), name


def test_mask_level_refused_for_a_classifier(
    slide: tuple[Path, Path, np.ndarray], tiny_hf_classifier: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    path, _, _ = slide
    argv = ["slide", str(path), "--model", str(tiny_hf_classifier), "--out", str(tmp_path)]
    assert main([*argv, "--mask-level", "1", "--no-progress"]) == 1
    assert "--mask-level: for segmentation models" in capsys.readouterr().err
