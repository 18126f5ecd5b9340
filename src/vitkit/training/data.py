"""Image-folder data for training: class discovery, splits, a bad-image scan, balancing, sampling.

Layout: one sub-folder per class (``root/<class>/**/*.png``). When ``root`` holds ``train/``
(and optionally ``val/``, ``test/``) those are used as the splits; otherwise ``root`` is the
training set and a seeded, stratified validation split is drawn from it and written to the run
folder (``split.json``) so a re-run or ``--resume`` uses exactly the same images.

Class balance: oversampling repeats minority-class images until every class has as many as the
largest (the index list is fixed for the run; the sampler shuffles it every epoch);
``weighted-loss`` keeps the data as is and weighs the loss by inverse class frequency.

Sampling is deterministic and rank-aware: every epoch permutes the (oversampled) index list with
a generator seeded by (seed, epoch); rank ``r`` of ``W`` takes positions r, r+W, r+2W, ... of that
one global order, so W processes with per-rank batch b see exactly the global batches a single
process with batch W x b sees. Each sample also carries its own augmentation seed, derived from
(seed, epoch, position), so augmentations do not depend on the number of processes or workers.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from vitkit.atomic_files import atomic_write_text
from vitkit.errors import DatasetError, TrainingError
from vitkit.images.decode import IMAGE_EXTENSIONS, load_image
from vitkit.training.augment import build_train_transform, check_mix
from vitkit.training.config import BALANCE_MODES, TrainConfig
from vitkit.training.model_spec import ModelSpec

# what vitkit.images.decode reads (phone formats included), plus the netpbm files of old sets
IMAGE_SUFFIXES = set(IMAGE_EXTENSIONS) | {".ppm", ".pgm"}
SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    path: str
    label: int


@dataclass
class DataSplits:
    """The images of each split, with class names in index order (sorted folder names)."""

    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample] = field(default_factory=list)
    source: str = "folders"  # "folders" (train/val/test sub-roots) or "split.json"

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.classes))


# ---- discovering images ----------------------------------------------------------------------
def find_classes(root: Path) -> list[str]:
    """Sorted names of the class sub-folders of ``root`` (hidden folders ignored)."""
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory (expected one sub-folder per class)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"{root}: no class sub-folders (expected e.g. {root}/cat/*.jpg)")
    return classes


def list_samples(root: Path, classes: Sequence[str]) -> list[Sample]:
    """Every image file under ``root/<class>/`` (recursively), sorted by path for determinism."""
    samples = []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                samples.append(Sample(str(path), label))
    return samples


def load_rgb(path: str) -> Image.Image:
    """Decode one image to RGB (EXIF-transposed) with vitkit.images.decode."""

    return load_image(path)


def open_sample(sample: Any) -> Image.Image:
    """A sample's image: its file, or what a stored sample reads from its store
    (``vitkit.training.stored_data``: datasets, Parquet, WebDataset)."""
    opener = getattr(sample, "open_image", None)
    return opener() if opener is not None else load_rgb(sample.path)


# ---- scanning for unreadable images -------------------------------------------------------
@dataclass
class ScanResult:
    good: list[Sample]
    bad: list[tuple[str, str]]  # (path, reason)
    images: list[np.ndarray] | None  # decoded HWC uint8 arrays of ``good`` when kept

    def report(self) -> str:
        lines = [f"{len(self.bad)} unreadable image(s):"]
        lines += [f"  {path}: {reason}" for path, reason in self.bad]
        return "\n".join(lines)


def _decode(sample: Sample, keep: bool) -> tuple[np.ndarray | None, str | None]:
    try:
        image = open_sample(sample)
    except Exception as error:  # any decoder failure is reported, never raised mid-epoch
        return None, f"{type(error).__name__}: {error}"
    return (np.asarray(image, dtype=np.uint8) if keep else None), None


def scan_images(samples: Sequence[Sample], keep: bool = False, threads: int = 4) -> ScanResult:
    """Decode every image once, up front. ``keep`` returns the decoded pixels (an in-memory cache)."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:  # PIL decodes without the GIL
        results = list(pool.map(lambda s: _decode(s, keep), samples))
    good, bad, images = [], [], []
    for sample, (pixels, reason) in zip(samples, results, strict=True):
        if reason is not None:
            bad.append((sample.path, reason))
            continue
        good.append(sample)
        if pixels is not None:
            images.append(pixels)
    return ScanResult(good, bad, images if keep else None)


# ---- splits -------------------------------------------------------------------------------
def stratified_split(
    labels: Sequence[int], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """(train, val) indices: ``fraction`` of every class goes to val, at least one image of any
    class with two or more, never all of a class. Deterministic for a given seed."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    labels_array = np.asarray(labels)
    train, val = [], []
    for label in np.unique(labels_array):
        members = np.flatnonzero(labels_array == label)
        members = members[rng.permutation(len(members))]
        count = round(fraction * len(members))
        count = min(max(count, 1 if len(members) >= 2 else 0), len(members) - 1)
        val += members[:count].tolist()
        train += members[count:].tolist()
    return sorted(train), sorted(val)


def _check_subset(root: Path, split: str, classes: list[str]) -> None:
    extra = sorted(set(find_classes(root / split)) - set(classes))
    if extra:
        raise DatasetError(
            f"{root / split}: class folder(s) {extra} have no counterpart in {root / 'train'}; "
            "every class must have training images"
        )


def prepare_splits(
    root: str | Path, run_dir: str | Path | None, val_fraction: float = 0.1, seed: int = 0
) -> DataSplits:
    """The run's splits: ``root/{train,val,test}`` when present, else a stratified split of
    ``root`` (re-read from ``run_dir/split.json`` when it exists, written there otherwise)."""
    root = Path(root)
    if (root / "train").is_dir():
        classes = find_classes(root / "train")
        train = list_samples(root / "train", classes)
        test: list[Sample] = []
        if (root / "test").is_dir():
            _check_subset(root, "test", classes)
            test = list_samples(root / "test", classes)
        if (root / "val").is_dir():
            _check_subset(root, "val", classes)
            splits = DataSplits(classes, train, list_samples(root / "val", classes), test)
            return _require_images(splits, root)
        splits = _split_from_file_or_new(
            root / "train", classes, train, run_dir, val_fraction, seed
        )
        splits.test = test
        return _require_images(splits, root)
    classes = find_classes(root)
    samples = list_samples(root, classes)
    splits = _split_from_file_or_new(root, classes, samples, run_dir, val_fraction, seed)
    return _require_images(splits, root)


def _require_images(splits: DataSplits, root: Path) -> DataSplits:
    if not splits.train:
        raise DatasetError(f"{root}: no training images with extensions {sorted(IMAGE_SUFFIXES)}")
    return splits


def _split_from_file_or_new(
    root: Path,
    classes: list[str],
    samples: list[Sample],
    run_dir: str | Path | None,
    val_fraction: float,
    seed: int,
) -> DataSplits:
    split_file = Path(run_dir) / "split.json" if run_dir is not None else None
    if split_file is not None and split_file.exists():
        return read_split(split_file, root)
    train_idx, val_idx = stratified_split([s.label for s in samples], val_fraction, seed)
    splits = DataSplits(
        classes, [samples[i] for i in train_idx], [samples[i] for i in val_idx], source="split.json"
    )
    if split_file is not None:
        write_split(split_file, root, splits, val_fraction, seed)
    return splits


def write_split(path: Path, root: Path, splits: DataSplits, val_fraction: float, seed: int) -> None:
    """Record the split (paths relative to ``root``) so it can be reproduced exactly."""
    data = {
        "root": str(root.resolve()),
        "seed": seed,
        "val_fraction": val_fraction,
        "classes": splits.classes,
        "train": [[os.path.relpath(s.path, root), s.label] for s in splits.train],
        "val": [[os.path.relpath(s.path, root), s.label] for s in splits.val],
    }
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def read_split(path: Path, root: Path) -> DataSplits:
    data = json.loads(path.read_text())
    missing = [rel for rel, _ in data["train"] + data["val"] if not (root / rel).exists()]
    if missing:
        raise DatasetError(
            f"{path} lists {len(missing)} image(s) that are no longer under {root} "
            f"(first: {missing[0]}); restore them or start a new run folder"
        )

    def samples(key: str) -> list[Sample]:
        return [Sample(str(root / rel), int(label)) for rel, label in data[key]]

    return DataSplits(list(data["classes"]), samples("train"), samples("val"), source="split.json")


# ---- class balance ------------------------------------------------------------------------
def class_counts(labels: Sequence[int], num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)


def resolve_balance(mode: str, labels: Sequence[int], num_classes: int) -> str:
    """``auto`` becomes ``oversample`` when class counts differ, ``none`` when they are equal."""
    if mode not in BALANCE_MODES:
        raise ValueError(f"unknown balance mode {mode!r}: choose one of {BALANCE_MODES}")
    if mode != "auto":
        return mode
    counts = class_counts(labels, num_classes)
    present = counts[counts > 0]
    return "oversample" if present.size and present.min() != present.max() else "none"


def oversample_indices(labels: Sequence[int], seed: int) -> list[int]:
    """Indices with every class repeated up to the largest class's count.

    A class with n images and a target of m gets m // n full copies plus m % n images drawn
    without replacement (seeded), so no image is repeated more than once more than another.
    """
    labels_array = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels_array, return_counts=True)
    target = counts.max()
    indices: list[int] = []
    for label in classes:
        members = np.flatnonzero(labels_array == label)
        copies, remainder = divmod(int(target), len(members))
        indices += np.tile(members, copies).tolist()
        indices += np.sort(rng.choice(members, size=remainder, replace=False)).tolist()
    return indices


def inverse_frequency_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Loss weights N / (K * n_c) (scikit-learn's "balanced"); 0 for a class with no images."""
    counts = class_counts(labels, num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


# ---- dataset and sampler ------------------------------------------------------------------
class ImageDataset(Dataset):
    """Images and labels; ``transform`` maps a PIL image to a float tensor.

    Items are addressed by an index or by an ``(index, seed)`` pair from ``EpochSampler``: with a
    seed the transform runs under ``torch.manual_seed(seed)`` in a forked RNG, so its random
    choices are a function of the sample's place in the epoch, not of worker or rank.
    ``images`` optionally holds the decoded pixels (from ``scan_images(keep=True)``).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[Image.Image], torch.Tensor],
        images: Sequence[np.ndarray] | None = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.images = images

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, index: int) -> Image.Image:
        if self.images is not None:
            return Image.fromarray(self.images[index])
        return open_sample(self.samples[index])

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        image = self.image(index)
        if seed is None:
            pixels = self.transform(image)
        else:
            with torch.random.fork_rng(devices=[]):
                # the CPU generator only: torch.manual_seed would also seed every accelerator,
                # which costs ~100x more than the transform's own random draws
                torch.default_generator.manual_seed(seed)
                pixels = self.transform(image)
        return pixels, self.samples[index].label


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A per-sample seed that depends only on (run seed, epoch, place in the epoch's order)."""
    return (seed * 1_000_003 + epoch * 998_244_353 + position * 2_654_435_761) % (2**63 - 1)


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(dataset index, augmentation seed)`` for this rank, one shuffled pass per epoch.

    ``indices`` is the epoch's index list (oversampled or not). With ``drop_last`` the global
    order is cut to a multiple of ``global_batch`` so every optimisation step sees a full batch on
    every rank (what makes W processes equal one, and keeps DDP's collectives in step). Without
    it (evaluation) nothing is padded or repeated: ranks may get one sample more or less, which is
    fine when no gradients are synchronised.
    """

    def __init__(
        self,
        indices: Sequence[int],
        *,
        shuffle: bool,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        global_batch: int | None = None,
        drop_last: bool = False,
    ) -> None:
        self.indices = list(indices)
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.global_batch = global_batch or num_replicas
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "seed": self.seed, "indices": self.indices}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.seed, self.indices = state["epoch"], state["seed"], list(state["indices"])

    def global_order(self) -> list[int]:
        order = self.indices
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
            order = [order[i] for i in torch.randperm(len(order), generator=generator).tolist()]
        if self.drop_last:
            return order[: len(order) // self.global_batch * self.global_batch]
        return order

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.global_order()
        for position in range(self.rank, len(order), self.num_replicas):
            yield order[position], sample_seed(self.seed, self.epoch, position)

    def __len__(self) -> int:
        total = len(self.indices)
        if self.drop_last:
            total = total // self.global_batch * self.global_batch
        return len(range(self.rank, total, self.num_replicas))


# ---- the data of a run ----------------------------------------------------------------------
@dataclass
class RunData:
    splits: DataSplits
    train: ImageDataset
    val: ImageDataset
    test: ImageDataset | None
    train_indices: list[int]  # after balancing
    balance: str
    class_weight: torch.Tensor | None
    bad: list[tuple[str, str]]


def prepare_run_data(
    cfg: TrainConfig, out: Path, spec: ModelSpec, splits: DataSplits, is_main: bool
) -> RunData:
    """Scan every image once (report unreadable ones), balance the training set, build datasets."""
    threads = min(8, os.cpu_count() or 1)
    all_samples = splits.train + splits.val + splits.test
    keep = cfg.cache_images == "yes" or (cfg.cache_images == "auto" and len(all_samples) <= 20000)
    scans = [
        scan_images(s, keep=keep, threads=threads) for s in (splits.train, splits.val, splits.test)
    ]
    bad = [item for scan in scans for item in scan.bad]
    if bad:
        report = ScanResult([], bad, None).report()
        if cfg.on_bad_image == "fail":
            raise DatasetError(report + "\n(pass --on-bad-image skip to train without them)")
        if is_main:
            atomic_write_text(out / "bad_images.txt", report + "\n")
            print(f"warning: skipping {report}", file=sys.stderr)
    train_scan, val_scan, test_scan = scans
    if not val_scan.good:
        raise DatasetError(f"{cfg.data}: the validation split has no readable images")
    labels = [s.label for s in train_scan.good]
    num_classes = len(splits.classes)
    balance = resolve_balance(cfg.balance, labels, num_classes)
    indices = (
        oversample_indices(labels, cfg.seed)
        if balance == "oversample"
        else list(range(len(labels)))
    )
    weight = inverse_frequency_weights(labels, num_classes) if balance == "weighted-loss" else None
    assert cfg.augment is not None and cfg.mix is not None, "resolve_recipe(cfg) first"
    train_transform = build_train_transform(cfg.augment, spec.image_size, spec.mean, spec.std)
    try:  # say so now, not at the first step
        check_mix(cfg.mix, cfg.mix_alpha)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    return RunData(
        splits=splits,
        train=ImageDataset(train_scan.good, train_transform, train_scan.images),
        val=ImageDataset(val_scan.good, spec.eval_transform, val_scan.images),
        test=ImageDataset(test_scan.good, spec.eval_transform, test_scan.images)
        if test_scan.good
        else None,
        train_indices=indices,
        balance=balance,
        class_weight=weight,
        bad=bad,
    )
