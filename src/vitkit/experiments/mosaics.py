"""A multi-label data set from real images: 2x2 mosaics whose labels are the classes they show.

Each mosaic holds four cells; a cell is empty (black) with probability ``empty``, else a real
image (scikit-learn's handwritten digits, or Fashion-MNIST where Debian's package is installed)
of a class drawn with unequal odds, so some labels are common and some rare (``rare_factor``:
the odds shrink geometrically from the first class to the last). The labels of a mosaic are the
set of classes present: 0 to 4 of them, order and repeats ignored. Everything is seeded.

The source images are split first (disjoint pools for train / val / test), so no digit image
appears in two splits. Written: ``ROOT/images/<split>/*.png`` and ``ROOT/{train,val,test}.csv``
(vitkit's label tables: ``path,labels`` with labels ``;``-separated), plus ``ROOT/summary.json``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vitkit.experiments.demo_data import load_digits_arrays, load_fashion_mnist_arrays

SOURCES = ("digits", "fashion-mnist")


@dataclass
class MosaicData:
    root: Path
    labels: list[str]
    counts: dict[str, dict[str, int]]  # split -> label -> mosaics showing it
    sizes: dict[str, int]  # split -> mosaics


def class_odds(num_classes: int, rare_factor: float) -> np.ndarray:
    """P(class) for one filled cell: geometric from class 0 down to ``rare_factor`` x that."""
    weights = rare_factor ** (np.arange(num_classes) / max(1, num_classes - 1))
    return weights / weights.sum()


def build_mosaics(
    root: str | Path,
    *,
    source: str = "digits",
    sizes: tuple[int, int, int] = (2000, 400, 800),
    empty: float = 0.25,
    rare_factor: float = 0.05,
    seed: int = 0,
) -> MosaicData:
    """Write the mosaics and their label tables under ``root`` (see the module docstring)."""
    if source not in SOURCES:
        raise ValueError(f"unknown mosaic source {source!r}: choose one of {SOURCES}")
    images, classes, names = (
        load_digits_arrays() if source == "digits" else load_fashion_mnist_arrays(per_class=600)
    )
    rng = np.random.default_rng(seed)
    pools = _split_pools(classes, len(names), rng)
    odds = class_odds(len(names), rare_factor)
    root = Path(root)
    counts, written = {}, {}
    for split, size, pool in zip(("train", "val", "test"), sizes, pools, strict=True):
        rows = _write_split(root, split, size, images, pool, names, odds, empty, rng)
        counts[split] = {name: sum(name in labels for _, labels in rows) for name in names}
        written[split] = len(rows)
    summary = {"source": source, "seed": seed, "empty": empty, "rare_factor": rare_factor}
    summary.update({"class_odds": dict(zip(names, odds.round(4).tolist(), strict=True))})
    (root / "summary.json").write_text(json.dumps({**summary, "counts": counts}, indent=1) + "\n")
    return MosaicData(root, list(names), counts, written)


def _split_pools(
    classes: np.ndarray, num_classes: int, rng: np.random.Generator
) -> list[list[np.ndarray]]:
    """Per split, per class, the indices of the source images it may use (60/15/25%)."""
    pools: list[list[np.ndarray]] = [[], [], []]
    for label in range(num_classes):
        members = rng.permutation(np.flatnonzero(classes == label))
        cuts = np.rint(np.array([0.6, 0.75]) * len(members)).astype(int)
        for split, part in enumerate(np.split(members, cuts)):
            pools[split].append(part)
    return pools


def _write_split(
    root: Path,
    split: str,
    size: int,
    images: np.ndarray,
    pool: list[np.ndarray],
    names: list[str],
    odds: np.ndarray,
    empty: float,
    rng: np.random.Generator,
) -> list[tuple[str, list[str]]]:
    folder = root / "images" / split
    folder.mkdir(parents=True, exist_ok=True)
    height, width = images.shape[1:3]
    rows = []
    for index in range(size):
        canvas = np.zeros((2 * height, 2 * width), dtype=np.uint8)
        present = set()
        for cell in range(4):
            if rng.random() < empty:
                continue
            label = int(rng.choice(len(names), p=odds))
            image = images[rng.choice(pool[label])]
            top, left = (cell // 2) * height, (cell % 2) * width
            canvas[top : top + height, left : left + width] = image
            present.add(label)
        relative = f"images/{split}/{index:05d}.png"
        Image.fromarray(canvas).save(root / relative)
        rows.append((relative, [names[label] for label in sorted(present)]))
    with open(root / f"{split}.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "labels"])
        writer.writerows([path, ";".join(labels)] for path, labels in rows)
    return rows
