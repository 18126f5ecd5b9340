"""The data of MAE pre-training: every image under a folder, labels ignored, each with its mask.

- ``list_images``: every image file under the folder, nested or not (hidden ones skipped), or
  the images a label table lists (``vitkit.training.labels``; its labels unused);
- ``unlabeled_splits``: a seeded held-out share for validation, written to split.json;
- ``mae_train_transform``: MAE's crops (random-resized, scale 0.2-1, bicubic) and flips;
- ``MaskedImages``: each image with its mask noise as the "target". Under the sampler's
  per-sample seed the crop and the noise are drawn from it, so N processes mask exactly as one
  does and a resumed run as an uninterrupted one; without a seed (evaluation) the noise is fixed
  by the image's index, so every epoch's validation loss is measured on the same masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.transforms import v2

from vitkit.errors import DatasetError
from vitkit.training import data as vdata
from vitkit.training import labels as vlabels

PSEUDO_CLASS = "image"  # unlabeled images: one pseudo-class, never used as a label


def list_images(root: Path) -> list[vdata.Sample]:
    """Every image file under ``root`` (recursively; hidden files and folders skipped), sorted;
    or, when ``root`` is a label table (.csv / .jsonl), the images its rows list."""
    if root.is_file() and root.suffix.lower() in vlabels.TABLE_SUFFIXES:
        samples = _table_images(root)
    elif not root.is_dir():
        raise DatasetError(
            f"{root}: not a directory (expected a folder of images, nested or not, or a label "
            "table: .csv / .jsonl)"
        )
    else:
        samples = [
            vdata.Sample(str(path), 0)
            for path in sorted(root.rglob("*"))
            if path.suffix.lower() in vdata.IMAGE_SUFFIXES
            and path.is_file()
            and not any(part.startswith(".") for part in path.relative_to(root).parts)
        ]
    if len(samples) < 2:
        raise DatasetError(
            f"{root}: {len(samples)} image(s) found; pre-training needs at least 2 (one is held "
            f"out for validation); extensions read: {', '.join(sorted(vdata.IMAGE_SUFFIXES))}"
        )
    return samples


def _table_images(table: Path) -> list[vdata.Sample]:
    """The images of a label table's rows, sorted; a bad row (missing file, duplicate) is refused."""
    read = vlabels.read_label_table(table)
    if read.problems:
        raise DatasetError(read.report())
    return [vdata.Sample(path, 0) for path in sorted(row.path for row in read.rows)]


def unlabeled_splits(
    root: Path, out: Path | None, val_fraction: float, max_val: int, seed: int
) -> vdata.DataSplits:
    """Train/val split of every image under ``root``: ``val_fraction`` of them, at most
    ``max_val``, at least one; re-read from ``out/split.json`` when it exists."""
    split_file = out / "split.json" if out is not None else None
    base = root.parent if root.is_file() else root  # split.json's paths are relative to it
    if split_file is not None and split_file.exists():
        return vdata.read_split(split_file, base)
    samples = list_images(root)
    count = min(max(1, round(val_fraction * len(samples))), max_val, len(samples) - 1)
    order = np.random.default_rng(seed).permutation(len(samples))
    val = sorted(order[:count].tolist())
    train = sorted(order[count:].tolist())
    splits = vdata.DataSplits(
        [PSEUDO_CLASS],
        [samples[i] for i in train],
        [samples[i] for i in val],
        source="split.json",
    )
    if split_file is not None:
        vdata.write_split(split_file, base, splits, val_fraction, seed)
    return splits


def mae_train_transform(
    size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...], min_scale: float
) -> v2.Compose:
    """MAE's augmentation: RandomResizedCrop(scale=(min_scale, 1), bicubic) + horizontal flip."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RGB(),
            v2.RandomResizedCrop(
                size,
                scale=(min_scale, 1.0),
                interpolation=v2.InterpolationMode.BICUBIC,
                antialias=True,
            ),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


class MaskedImages(vdata.ImageDataset):
    """Images with the mask noise (num_patches,) of each as the target; labels are ignored.

    Under a sampler seed the crop and the noise are drawn from it (reproducible whatever the
    processes and workers); without one (evaluation) the noise is fixed by the image's index.
    """

    def __init__(
        self,
        samples: Sequence[vdata.Sample],
        transform: Any,
        images: Sequence[np.ndarray] | None,
        num_patches: int,
    ) -> None:
        super().__init__(samples, transform, images)
        self.num_patches = num_patches

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        index, seed = item if isinstance(item, tuple) else (item, None)
        image = self.image(index)
        if seed is None:
            noise = torch.rand(self.num_patches, generator=torch.Generator().manual_seed(index))
            return self.transform(image), noise
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            pixels = self.transform(image)
            return pixels, torch.rand(self.num_patches)
