"""Image folders built from real data that ships with the software: no network needed.

- ``digits``: the 1,797 real handwritten digits of scikit-learn's ``load_digits`` (8x8 pixels, 16
  grey levels, 10 classes; UCI "Optical Recognition of Handwritten Digits", CC BY 4.0), upscaled
  to PNGs. A 45 kB copy ships in ``vitkit/assets/digits.npz`` so that ``vitkit demo`` runs on the
  base install (scikit-learn is a development dependency); a test checks it equals scikit-learn's.
- ``fashion-mnist``: Zalando's Fashion-MNIST (28x28, 10 clothing classes), read from Debian's
  ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``) when it is installed.

Both write ``ROOT/train/<class>/*.png`` and ``ROOT/test/<class>/*.png`` (stratified, seeded) and
can cut one class of the training split to a fraction of its size to make the set unbalanced;
the test split stays balanced so per-class recall is measured fairly.
"""

from __future__ import annotations

import gzip
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vitkit.atomic_files import atomic_write_text

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
)


@dataclass
class DemoData:
    root: Path
    classes: list[str]
    train_counts: dict[str, int]
    test_counts: dict[str, int]
    minority: str | None


def fashion_mnist_available(directory: Path = FASHION_MNIST_DIR) -> bool:
    return (directory / "train-images-idx3-ubyte.gz").exists()


DIGITS = Path(__file__).resolve().parent.parent / "assets" / "digits.npz"


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8 (N, 8, 8) scaled 0..255, labels, class names)."""
    with np.load(DIGITS) as digits:
        grey_levels, labels = digits["images"], digits["labels"]
    images = np.clip(grey_levels * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    return images, labels.astype(np.int64), [str(d) for d in range(10)]


def read_idx(path: Path) -> np.ndarray:
    """An MNIST-style IDX file (gzip'd): magic, dimensions, then uint8 data."""
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_fashion_mnist_arrays(
    directory: Path = FASHION_MNIST_DIR, per_class: int = 300, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A seeded subset of ``per_class`` images per class from Fashion-MNIST's training file."""
    if not fashion_mnist_available(directory):
        raise FileNotFoundError(
            f"{directory}: Fashion-MNIST not found; install it with "
            "`sudo apt-get install dataset-fashion-mnist` or use the digits data"
        )
    images = read_idx(directory / "train-images-idx3-ubyte.gz")
    labels = read_idx(directory / "train-labels-idx1-ubyte.gz").astype(np.int64)
    rng = np.random.default_rng(seed)
    keep = np.concatenate(
        [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)]
    )
    keep.sort()
    return images[keep], labels[keep], list(FASHION_MNIST_CLASSES)


def write_image_folder(
    root: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    *,
    size: int = 32,
    test_fraction: float = 0.2,
    minority: int | None = None,
    minority_fraction: float = 0.1,
    seed: int = 0,
) -> DemoData:
    """Write train/test class folders of PNGs (grey images upscaled bicubically to ``size``).

    ``minority``: index of a class whose training images are cut to ``minority_fraction``
    (at least 2 remain, so a validation split can still take one).
    """
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    rng = np.random.default_rng(seed)
    train_counts: dict[str, int] = {}
    test_counts: dict[str, int] = {}
    for label, name in enumerate(classes):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        n_test = round(test_fraction * len(members))
        test, train = members[:n_test], members[n_test:]
        if label == minority:
            train = train[: max(2, round(minority_fraction * len(train)))]
        for split, chosen, counts in (("train", train, train_counts), ("test", test, test_counts)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in chosen:
                picture = Image.fromarray(images[index])
                if picture.size != (size, size):
                    picture = picture.resize((size, size), Image.Resampling.BICUBIC)
                picture.save(folder / f"{index:05d}.png")
            counts[name] = len(chosen)
    info = DemoData(
        root,
        list(classes),
        train_counts,
        test_counts,
        classes[minority] if minority is not None else None,
    )
    # README.json last: its presence says the folder is complete (cli compare reuses it).
    summary: dict[str, Any] = {"classes": info.classes, "train": train_counts}
    summary |= {"test": test_counts, "minority": info.minority}
    atomic_write_text(root / "README.json", json.dumps(summary, indent=1) + "\n")
    return info


def build_demo_folder(
    root: str | Path,
    dataset: str = "digits",
    *,
    size: int = 32,
    minority: int | None = 8,
    minority_fraction: float = 0.1,
    seed: int = 0,
    fashion_mnist_dir: Path = FASHION_MNIST_DIR,
) -> DemoData:
    """``digits`` or ``fashion-mnist`` as an unbalanced image folder under ``root``."""
    if dataset == "digits":
        images, labels, classes = load_digits_arrays()
    elif dataset == "fashion-mnist":
        images, labels, classes = load_fashion_mnist_arrays(fashion_mnist_dir, seed=seed)
    else:
        raise ValueError(f"unknown demo dataset {dataset!r}: choose digits or fashion-mnist")
    return write_image_folder(
        root,
        images,
        labels,
        classes,
        size=size,
        minority=minority,
        minority_fraction=minority_fraction,
        seed=seed,
    )
