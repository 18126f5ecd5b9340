"""Segmentation data: images and their masks, checked before training, rare classes oversampled.

Layouts (class names in ``labels.json``, a list or {"0": name, ...}, or ``labels.txt``, one
name per line, in DATA)::

    DATA/images/<stem>.jpg + DATA/masks/<stem>.png      a 10% validation split is drawn
                                                         (seeded) and written to OUT/split.json
    DATA/{train,val,test}/images/ + .../masks/           splits as given (test evaluated at
                                                         the end; no val/: drawn from train/)
    a CSV table with columns image,mask (paths relative to the table), or DATA/{train,val,test}.csv

A mask is a single-channel PNG of class indices (255 = not labelled), the size of its image.
Every mask is read once before training: one whose size or values do not fit its image or the
class list stops the run with a message naming the file (``vitkit.images.masks.check_mask``).

Oversampling (``--balance auto|oversample``): repeat-factor sampling (Gupta et al., LVIS, 2019):
a class present in a fraction f_c of the training images gets r_c = max(1, sqrt(f_max / f_c)),
an image the largest r_c of the classes it shows, repeated floor(r) times plus once more with
probability r - floor(r) (seeded). ``weighted-loss`` weighs the cross-entropy by inverse pixel
frequency instead.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vitkit.atomic_files import atomic_write_text
from vitkit.errors import DatasetError
from vitkit.images.masks import check_mask, read_mask
from vitkit.training.data import IMAGE_SUFFIXES, SPLIT_NAMES, DataSplits, Sample, load_rgb

LABEL_FILES = ("labels.json", "labels.txt")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".gif")
_MAX_LISTED = 10


@dataclass(frozen=True)
class MaskSample(Sample):
    """An image and its mask (``label`` unused: -1)."""

    mask: str = ""


# ---- recognising and reading the layout -----------------------------------------------------
def is_mask_dataset(data: str | os.PathLike[str]) -> bool:
    """Whether ``data`` is one of the layouts above (as opposed to class folders)."""
    path = Path(data)
    if path.is_file():
        return _is_mask_table(path)
    if not path.is_dir():
        return False
    roots = [path, *(path / split for split in SPLIT_NAMES)]
    if any((root / "images").is_dir() and (root / "masks").is_dir() for root in roots):
        return True
    return any(_is_mask_table(path / f"{split}.csv") for split in SPLIT_NAMES)


def _is_mask_table(path: Path) -> bool:
    if path.suffix.lower() != ".csv" or not path.is_file():
        return False
    with path.open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle), [])
    return {"image", "mask"} <= {name.strip().lower() for name in header}


def read_labels(folder: Path) -> list[str]:
    """Class names from ``labels.json`` or ``labels.txt`` in ``folder``; DatasetError if none."""
    json_path, text_path = (folder / name for name in LABEL_FILES)
    if json_path.is_file():
        try:
            data = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise DatasetError(f"{json_path}: not readable JSON ({error})") from None
        if isinstance(data, dict):
            try:
                data = [data[str(i)] for i in range(len(data))]
            except KeyError:
                raise DatasetError(
                    f"{json_path}: keys must be the class indices 0..{len(data) - 1}"
                ) from None
        if not isinstance(data, list) or not data:
            raise DatasetError(f"{json_path}: give a list of class names, index order")
        return [str(name) for name in data]
    if text_path.is_file():
        names = [line.strip() for line in text_path.read_text(encoding="utf-8").splitlines()]
        if any(names):
            return [name for name in names if name]
    raise DatasetError(
        f"{folder}: no labels.json or labels.txt: name the classes of the mask values 0, 1, ... "
        'there (e.g. labels.json: ["background", "tumour", "stroma"])'
    )


def pair_folder(root: Path) -> list[MaskSample]:
    """images/<stem>.* paired with masks/<stem>.*; DatasetError naming an unpaired file."""
    images = {p.stem: p for p in sorted((root / "images").rglob("*")) if _is_image(p)}
    masks = {
        p.stem: p
        for p in sorted((root / "masks").rglob("*"))
        if p.is_file() and p.suffix.lower() in MASK_SUFFIXES
    }
    unmasked = sorted(set(images) - set(masks))
    if unmasked:
        raise DatasetError(
            f"{images[unmasked[0]]}: no mask {root / 'masks' / unmasked[0]}.png "
            f"({len(unmasked)} image(s) without a mask): give every image a mask of the same stem"
        )
    orphans = sorted(set(masks) - set(images))
    if orphans:
        raise DatasetError(
            f"{masks[orphans[0]]}: a mask without an image in {root / 'images'} "
            f"({len(orphans)} such mask(s))"
        )
    if not images:
        raise DatasetError(f"{root / 'images'}: no images with extensions {sorted(IMAGE_SUFFIXES)}")
    return [MaskSample(str(images[stem]), -1, str(masks[stem])) for stem in sorted(images)]


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def read_table(path: Path) -> list[MaskSample]:
    """(image, mask) rows of a CSV table, paths relative to the table's folder."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    samples = []
    for number, row in enumerate(rows, start=2):
        fields = {key.strip().lower(): (value or "").strip() for key, value in row.items() if key}
        image, mask = (path.parent / fields["image"]), (path.parent / fields["mask"])
        for file in (image, mask):
            if not file.is_file():
                raise DatasetError(f"{path}, line {number}: {file} does not exist")
        samples.append(MaskSample(str(image), -1, str(mask)))
    if not samples:
        raise DatasetError(f"{path}: the table lists no (image, mask) rows")
    return samples


# ---- splits -----------------------------------------------------------------------------------
def read_mask_splits(
    data: str | os.PathLike[str], run_dir: Path | None, val_fraction: float, seed: int
) -> DataSplits:
    """The run's splits (see the module docstring); split.json is re-read on a re-run."""
    path = Path(data)
    folder = path.parent if path.is_file() else path
    classes = read_labels(folder)
    given = _given_splits(path)
    if "val" in given:
        return DataSplits(
            classes, _plain(given["train"]), _plain(given["val"]), _plain(given.get("test", []))
        )
    split_file = run_dir / "split.json" if run_dir is not None else None
    if split_file is not None and split_file.is_file():
        train, val = _read_split_file(split_file, folder)
    else:
        train, val = _draw_validation(given["train"], val_fraction, seed)
        if split_file is not None:
            _write_split_file(split_file, folder, train, val, val_fraction, seed)
    test = _plain(given.get("test", []))
    return DataSplits(classes, _plain(train), _plain(val), test, "split.json")


def _plain(samples: list[MaskSample]) -> list[Sample]:
    """The samples as the splits type names them (each still a MaskSample)."""
    return list(samples)


def split_samples(data: str | os.PathLike[str], split: str | None) -> tuple[list[MaskSample], str]:
    """The (image, mask) pairs of one split of a mask layout (default: test when there is one,
    else all of DATA), and the split's name; DatasetError naming what is missing."""
    given = _given_splits(Path(data))
    if split is None:
        split = "test" if "test" in given else "train"
    if split not in given:
        raise DatasetError(f"{data}: no {split} split (it has {', '.join(sorted(given))})")
    return given[split], "all" if len(given) == 1 else split


def _given_splits(path: Path) -> dict[str, list[MaskSample]]:
    if path.is_file():
        return {"train": read_table(path)}
    tables = {s: path / f"{s}.csv" for s in SPLIT_NAMES if _is_mask_table(path / f"{s}.csv")}
    if tables:
        return {split: read_table(table) for split, table in tables.items()}
    folders = {s: path / s for s in SPLIT_NAMES if (path / s / "images").is_dir()}
    if folders:
        if "train" not in folders:
            raise DatasetError(f"{path}: has split folders but no train/images + train/masks")
        return {split: pair_folder(folder) for split, folder in folders.items()}
    return {"train": pair_folder(path)}


def _draw_validation(
    samples: list[MaskSample], fraction: float, seed: int
) -> tuple[list[MaskSample], list[MaskSample]]:
    if len(samples) < 2:
        raise DatasetError(f"{len(samples)} image(s): a validation split needs at least 2")
    order = np.random.default_rng(seed).permutation(len(samples))
    count = min(max(1, round(fraction * len(samples))), len(samples) - 1)
    val = sorted(order[:count].tolist())
    chosen = set(val)
    return [s for i, s in enumerate(samples) if i not in chosen], [samples[i] for i in val]


def _write_split_file(
    path: Path,
    root: Path,
    train: list[MaskSample],
    val: list[MaskSample],
    fraction: float,
    seed: int,
) -> None:
    def rows(samples: list[MaskSample]) -> list[list[str]]:
        return [[os.path.relpath(s.path, root), os.path.relpath(s.mask, root)] for s in samples]

    data: dict[str, Any] = {"root": str(root.resolve()), "seed": seed, "val_fraction": fraction}
    data.update({"train": rows(train), "val": rows(val)})
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def _read_split_file(path: Path, root: Path) -> tuple[list[MaskSample], list[MaskSample]]:
    data = json.loads(path.read_text(encoding="utf-8"))

    def samples(key: str) -> list[MaskSample]:
        found = [MaskSample(str(root / image), -1, str(root / mask)) for image, mask in data[key]]
        missing = [s.path for s in found if not Path(s.path).is_file()]
        if missing:
            raise DatasetError(
                f"{path} lists {len(missing)} image(s) no longer under {root} (first: "
                f"{missing[0]}); restore them or start a new run folder"
            )
        return found

    return samples("train"), samples("val")


# ---- the scan: every image and mask read once -------------------------------------------------
@dataclass
class MaskScan:
    good: list[MaskSample]
    bad: list[tuple[str, str]]  # unreadable images: (path, reason)
    images: list[np.ndarray] | None  # decoded HWC uint8, when kept
    masks: list[np.ndarray] | None
    presence: np.ndarray  # (images, classes) bool: which classes each image shows
    pixel_counts: np.ndarray  # (classes,) labelled pixels of each class


def scan_masks(
    samples: Sequence[MaskSample], classes: Sequence[str], *, keep: bool, threads: int = 4
) -> MaskScan:
    """Read every pair; DatasetError listing the masks that do not fit (before any training)."""
    [scan] = scan_splits([samples], classes, keep=keep, threads=threads)
    return scan


def scan_splits(
    splits: Sequence[Sequence[MaskSample]], classes: Sequence[str], *, keep: bool, threads: int = 4
) -> list[MaskScan]:
    """``scan_masks`` of several splits, one DatasetError naming the misfits of all of them."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        results = [list(pool.map(lambda s: _read_pair(s, len(classes)), part)) for part in splits]
    problems = [r for part in results for r in part if isinstance(r, DatasetError)]
    if problems:
        listed = "\n  ".join(str(p) for p in problems[:_MAX_LISTED])
        more = (
            f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        )
        raise DatasetError(f"{len(problems)} mask(s) do not fit:\n  {listed}{more}")
    return [
        _collect(part, found, len(classes), keep)
        for part, found in zip(splits, results, strict=True)
    ]


def _collect(
    samples: Sequence[MaskSample], results: list[Any], num_classes: int, keep: bool
) -> MaskScan:
    """The scan of one split from its pairs as read (none of them a misfit)."""
    good, bad, images, masks, presence = [], [], [], [], []
    counts = np.zeros(num_classes, dtype=np.int64)
    for sample, result in zip(samples, results, strict=True):
        if isinstance(result, str):
            bad.append((sample.path, result))
            continue
        assert isinstance(result, tuple)
        image, mask = result
        pixel_counts = np.bincount(mask.ravel(), minlength=256)[:num_classes]
        counts += pixel_counts
        presence.append(pixel_counts > 0)
        good.append(sample)
        if keep:
            images.append(image)
            masks.append(mask)
    table = np.array(presence, dtype=bool).reshape(len(good), num_classes)
    return MaskScan(good, bad, images if keep else None, masks if keep else None, table, counts)


def _read_pair(
    sample: MaskSample, num_classes: int
) -> tuple[np.ndarray, np.ndarray] | str | DatasetError:
    try:
        image = np.array(load_rgb(sample.path), dtype=np.uint8)
    except Exception as error:  # an unreadable image is reported (and skipped or fatal)
        return f"{type(error).__name__}: {error}"
    try:
        mask = read_mask(sample.mask)
        check_mask(mask, num_classes, sample.mask, image.shape[:2])
    except DatasetError as error:
        return error
    return image, mask


# ---- balance ----------------------------------------------------------------------------------
def repeat_factors(presence: np.ndarray) -> np.ndarray:
    """Per image: the largest sqrt(f_max / f_c) (at least 1) of the classes it shows."""
    frequency = presence.mean(axis=0) if len(presence) else np.zeros(presence.shape[1])
    seen = frequency > 0
    factors = np.ones_like(frequency)
    factors[seen] = np.maximum(1.0, np.sqrt(frequency[seen].max() / frequency[seen]))
    return np.array([factors[row].max() if row.any() else 1.0 for row in presence])


def oversample_rare(presence: np.ndarray, seed: int) -> list[int]:
    """Image indices, each repeated by its repeat factor (stochastic rounding, seeded)."""
    rng = np.random.default_rng(seed)
    indices: list[int] = []
    for index, factor in enumerate(repeat_factors(presence)):
        copies = math.floor(factor) + int(rng.random() < factor - math.floor(factor))
        indices += [index] * copies
    return indices


def pixel_class_weights(pixel_counts: np.ndarray) -> torch.Tensor:
    """Inverse pixel-frequency weights N / (K n_c) over the classes present; 0 for absent ones."""
    counts = pixel_counts.astype(np.float64)
    present = counts > 0
    weights = np.zeros(len(counts))
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


# ---- the dataset ------------------------------------------------------------------------------
PairTransform = Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]]


class MaskDataset(Dataset):
    """(pixels, mask) pairs; items addressed as ``vitkit.training.data.ImageDataset``'s are (an
    index, or an (index, seed) pair from ``EpochSampler``: the augmentation then runs seeded)."""

    def __init__(
        self,
        samples: Sequence[MaskSample],
        transform: PairTransform,
        images: Sequence[np.ndarray] | None = None,
        masks: Sequence[np.ndarray] | None = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.images, self.masks = images, masks

    def __len__(self) -> int:
        return len(self.samples)

    def pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self.images is not None and self.masks is not None:
            return self.images[index], self.masks[index]
        sample = self.samples[index]
        return np.array(load_rgb(sample.path), dtype=np.uint8), read_mask(sample.mask)

    def __getitem__(self, item: int | tuple[int, int]) -> Any:
        index, seed = item if isinstance(item, tuple) else (item, None)
        image, mask = self.pair(index)
        if seed is None:
            return self.transform(image, mask)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.transform(image, mask)
