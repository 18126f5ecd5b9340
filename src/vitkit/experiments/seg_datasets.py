"""Two segmentation data sets from real pixels, written as vitkit's mask layout
(``ROOT/{train,val,test}/{images,masks}/`` + ``ROOT/labels.json``).

- ``fashion_mosaics``: Fashion-MNIST items (Debian's ``dataset-fashion-mnist``) pasted at random
  places on a black canvas, 2-4 per canvas, later ones on top; each item's pixels (those
  brighter than ``threshold``) are labelled with its class, everything else "background". The
  item pools of the three splits are disjoint: no Fashion-MNIST image appears in two splits.
- ``ihc_stains``: scikit-image's immunohistochemistry sample (``skimage.data.immunohistochemistry``,
  512x512), labelled by colour deconvolution (``skimage.color.rgb2hed``): "DAB" where the DAB
  channel passes its Otsu threshold, "hematoxylin" where the hematoxylin channel does (and DAB
  does not), "background" elsewhere; each mask cleaned by a morphological opening and the removal
  of specks smaller than ``min_size`` pixels. The image is cut into bands of rows: training tiles
  (overlapping, stride tile/2) from the top, validation from the band below, test from the bottom
  band (tiles side by side), so no test pixel is ever trained on.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from vitkit.experiments.demo_data import FASHION_MNIST_CLASSES, load_fashion_mnist_arrays

FASHION_LABELS = ["background", *FASHION_MNIST_CLASSES]
IHC_LABELS = ["background", "hematoxylin", "DAB"]


def _write_pair(root: Path, split: str, name: str, image: np.ndarray, mask: np.ndarray) -> None:
    for folder in ("images", "masks"):
        (root / split / folder).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / split / "images" / f"{name}.png")
    Image.fromarray(mask.astype(np.uint8), mode="L").save(root / split / "masks" / f"{name}.png")


def _fresh(root: str | Path, labels: list[str]) -> Path:
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / "labels.json").write_text(json.dumps(labels) + "\n")
    return root


# ---- Fashion-MNIST mosaics -------------------------------------------------------------------
def fashion_mosaics(
    root: str | Path,
    *,
    sizes: tuple[int, int, int] = (400, 60, 120),
    canvas: int = 64,
    items: tuple[int, int] = (2, 4),
    threshold: int = 40,
    seed: int = 0,
) -> Path:
    """Write the mosaics (see the module docstring); returns ``root``."""
    images, classes, _ = load_fashion_mnist_arrays(per_class=120, seed=seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    cut = np.cumsum([len(order) * part // 10 for part in (6, 1)])
    pools = np.split(order, cut)  # 60% / 10% / 30% of the items, disjoint
    root = _fresh(root, FASHION_LABELS)
    for split, count, pool in zip(("train", "val", "test"), sizes, pools, strict=True):
        for index in range(count):
            image, mask = _mosaic(images, classes, pool, canvas, items, threshold, rng)
            _write_pair(root, split, f"{split}_{index:05d}", image, mask)
    return root


def _mosaic(
    images: np.ndarray,
    classes: np.ndarray,
    pool: np.ndarray,
    canvas: int,
    items: tuple[int, int],
    threshold: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    grey = np.zeros((canvas, canvas), dtype=np.uint8)
    mask = np.zeros((canvas, canvas), dtype=np.uint8)
    side = images.shape[1]
    for item in rng.choice(pool, size=int(rng.integers(items[0], items[1] + 1)), replace=False):
        top, left = (int(v) for v in rng.integers(0, canvas - side + 1, size=2))
        pixels = images[item]
        shown = pixels > threshold
        grey[top : top + side, left : left + side][shown] = pixels[shown]
        mask[top : top + side, left : left + side][shown] = int(classes[item]) + 1
    noise = rng.normal(0, 6, grey.shape)
    rgb = np.clip(grey.astype(np.float64) + noise, 0, 255).astype(np.uint8)
    return np.repeat(rgb[..., None], 3, axis=2), mask


# ---- immunohistochemistry stains -------------------------------------------------------------
def ihc_stain_mask(image: np.ndarray, min_size: int = 16) -> np.ndarray:
    """(H, W) classes 0 background, 1 hematoxylin, 2 DAB from colour deconvolution."""
    from skimage import color, filters, morphology

    stains = color.rgb2hed(image)
    layers = []
    for channel in (0, 2):  # hematoxylin, DAB
        values = stains[..., channel]
        positive = morphology.opening(values > filters.threshold_otsu(values))
        layers.append(morphology.remove_small_objects(positive, max_size=min_size))
    mask = np.zeros(image.shape[:2], dtype=np.uint8)
    mask[layers[0]] = 1
    mask[layers[1]] = 2  # DAB wins where both stains pass
    return mask


def ihc_stains(root: str | Path, *, tile: int = 64, bands: tuple[int, int] = (320, 384)) -> Path:
    """Write the tiles (see the module docstring); ``bands``: where validation and test start."""
    from skimage import data

    image = data.immunohistochemistry()
    mask = ihc_stain_mask(image)
    root = _fresh(root, IHC_LABELS)
    val_start, test_start = bands
    regions = {
        "train": (0, val_start, tile // 2),
        "val": (val_start, test_start, tile),
        "test": (test_start, image.shape[0], tile),
    }
    for split, (first, last, stride) in regions.items():
        for top in range(first, last - tile + 1, stride):
            for left in range(0, image.shape[1] - tile + 1, stride):
                window = np.s_[top : top + tile, left : left + tile]
                _write_pair(
                    root, split, f"{split}_{top:03d}_{left:03d}", image[window], mask[window]
                )
    return root
