"""The pictures of docs/mil.md, made by the commands themselves on generated slides.

Pyramidal TIFFs whose tissue is scikit-image's immunohistochemistry sample (real histology);
half of them hold a patch of violet stripes in about 2% of their tissue (the "lesion" a slide
label speaks of). A small random ViT (transformers, 32-px input) embeds the tiles with
``vitkit slide --embed``; ``vitkit mil train`` learns the slide labels; ``vitkit mil predict``
runs on a new positive slide from its file alone. Its heatmap-attention.png and gallery.png are
copied to docs/images/.

    python scripts/mil_example.py [--work /tmp/mil-example]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

SIDE = 768
TILE = 32
PATTERN = 96
DOCS_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"


def slide_pixels(rng: np.random.Generator, pattern_at: tuple[int, int] | None) -> np.ndarray:
    tissue_picture = np.asarray(
        Image.fromarray(data.immunohistochemistry())
        .rotate(float(rng.integers(0, 4) * 90))
        .resize((SIDE, SIDE))
    )
    canvas = np.full((SIDE, SIDE, 3), 245, dtype=np.uint8)
    y, x = np.mgrid[:SIDE, :SIDE]
    cy, cx = SIDE / 2 + rng.normal(0, 20, 2)
    inside = ((x - cx) / 330) ** 2 + ((y - cy) / 270) ** 2 <= 1
    canvas[inside] = tissue_picture[inside]
    if pattern_at is not None:
        top, left = pattern_at
        stripes = np.where((np.arange(PATTERN) // 6) % 2 == 0, 40, 170)[:, None]
        block = np.stack([stripes + 30, stripes, stripes + 50], -1) * np.ones((1, PATTERN, 1))
        canvas[top : top + PATTERN, left : left + PATTERN] = block.astype(np.uint8)
    return canvas


def write_tiff(path: Path, pixels: np.ndarray) -> None:
    import tifffile

    levels = [pixels, np.asarray(Image.fromarray(pixels).reduce(2))]
    with tifffile.TiffWriter(path) as tiff:
        for index, level in enumerate(levels):
            per_cm = 1e4 / (0.5 * 2**index)
            tiff.write(
                level,
                tile=(128, 128),
                compression="zlib",
                photometric="rgb",
                subfiletype=1 if index else 0,
                resolution=(per_cm, per_cm),
                resolutionunit="CENTIMETER",
                metadata=None,
            )


def encoder(path: Path) -> Path:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        image_size=32,
        patch_size=8,
    )
    transformers.ViTModel(config, add_pooling_layer=False).save_pretrained(path)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def copy_png(source: Path, target: Path) -> None:
    """The command's PNG, recompressed harder for the repository."""
    Image.open(source).save(target, optimize=True)


def vitkit(*arguments: str) -> None:
    command = [sys.executable, "-m", "vitkit", *arguments]
    print("$ vitkit " + " ".join(arguments), flush=True)
    subprocess.run(command, check=True)


def make_slides(work: Path) -> list[dict[str, str]]:
    """26 slides (odd ones with the lesion); the first 24 listed in slides.csv with a split."""
    (work / "slides").mkdir(parents=True)
    rng = np.random.default_rng(7)
    rows = []
    for index in range(26):
        positive = index % 2 == 1
        corner = (
            (int(rng.integers(8, 14)) * TILE, int(rng.integers(8, 14)) * TILE) if positive else None
        )
        path = work / "slides" / f"case{index:02d}.tif"
        write_tiff(path, slide_pixels(rng, corner))
        split = "train" if index < 16 else "val" if index < 20 else "test"
        if index < 24:
            rows.append(
                {"slide": str(path), "label": "lesion" if positive else "clear", "split": split}
            )
    with open(work / "slides.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mil-example"))
    work = parser.parse_args().work
    if work.exists():
        shutil.rmtree(work)
    rows = make_slides(work)
    model = encoder(work / "encoder")
    vitkit(
        "slide",
        *[r["slide"] for r in rows],
        "--model",
        str(model),
        "--embed",
        "--out",
        str(work / "emb"),
        "--no-progress",
    )
    vitkit(
        "mil", "train", "--data", str(work / "slides.csv"), "--embeddings", str(work / "emb"),
        "--out", str(work / "run"), "--epochs", "20", "--lr", "2e-3", "--no-progress",
    )  # fmt: skip
    best = str(work / "run" / "best")
    new = [str(work / "slides" / f"case{i}.tif") for i in (24, 25)]  # never listed: clear, lesion
    vitkit("mil", "predict", *new, "--model", best, "--out", str(work / "pred"))
    vitkit(
        "mil",
        "predict",
        new[1],
        "--model",
        best,
        "--out",
        str(work / "linear"),
        "--heatmap-scale",
        "linear",
        "--no-gallery",
    )
    DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
    copy_png(
        work / "linear" / "case25" / "heatmap-attention.png", DOCS_IMAGES / "mil-heatmap-linear.png"
    )
    copy_png(work / "pred" / "case25" / "heatmap-attention.png", DOCS_IMAGES / "mil-heatmap.png")
    copy_png(work / "pred" / "case25" / "gallery.png", DOCS_IMAGES / "mil-gallery.png")
    print(f"-> {DOCS_IMAGES}/mil-heatmap.png, mil-heatmap-linear.png, mil-gallery.png")


if __name__ == "__main__":
    main()
