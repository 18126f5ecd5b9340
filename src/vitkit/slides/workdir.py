"""A slide's work in progress: what makes a killed run resumable, and its results identical.

``OUT/<slide>/.vitkit-work/`` holds ``manifest.json`` (everything the results depend on: the
slide file, the tiling, the model and the batching), ``plan.npz`` (the tiles and thumbnail)
and one ``shard-NNNNNN.npz`` per finished run of consecutive batches. Each file appears whole
or not at all (written beside, then renamed). A new run whose manifest differs starts over;
one whose manifest matches skips the shards on disk. Batches are fixed slices of the tile list
(batch k = tiles [k*B, (k+1)*B)), so a resumed batch holds the same tiles as an uninterrupted
run's and its numbers are the same.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from vitkit.atomic_files import atomic_write_text
from vitkit.slides.geometry import TileGeometry
from vitkit.slides.tiler import SlidePlan
from vitkit.slides.tissue import Thumbnail

WORK_DIR = ".vitkit-work"


class WorkDir:
    def __init__(self, out_dir: Path) -> None:
        self.root = out_dir / WORK_DIR

    # ---- the manifest ---------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads((self.root / "manifest.json").read_text()))
        except (OSError, ValueError):
            return None

    def start(self, manifest: dict[str, Any]) -> bool:
        """Keep the work on disk if it was done for ``manifest``; else start afresh. Returns
        whether work was kept."""
        if self.manifest() == manifest:
            return True
        self.remove()
        self.root.mkdir(parents=True)
        atomic_write_text(self.root / "manifest.json", json.dumps(manifest, indent=2) + "\n")
        return False

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # ---- the plan -------------------------------------------------------------------------------
    def save_plan(self, plan: SlidePlan) -> None:
        geometry = plan.geometry
        self._save_arrays(
            self.root / "plan.npz",
            x=plan.x,
            y=plan.y,
            tissue=plan.tissue,
            thumbnail=plan.thumbnail.pixels,
            level0_per_pixel=np.array(plan.thumbnail.level0_per_pixel),
            mask=plan.mask,
            grid_shape=np.array(plan.grid_shape),
            level_size=np.array(plan.level_size),
            level0_size=np.array(plan.level0_size),
            geometry=np.array(
                [
                    geometry.level,
                    geometry.read_size,
                    geometry.read_stride,
                    geometry.downsample,
                    np.nan if geometry.mpp is None else geometry.mpp,
                ]
            ),
        )

    def load_plan(self) -> SlidePlan | None:
        path = self.root / "plan.npz"
        if not path.is_file():
            return None
        with np.load(path) as data:
            level, read_size, read_stride, downsample, mpp = data["geometry"].tolist()
            geometry = TileGeometry(
                int(level),
                int(read_size),
                int(read_stride),
                downsample,
                None if np.isnan(mpp) else mpp,
            )
            scale_x, scale_y = data["level0_per_pixel"].tolist()
            return SlidePlan(
                geometry=geometry,
                x=data["x"],
                y=data["y"],
                tissue=data["tissue"],
                grid_shape=_pair(data["grid_shape"]),
                thumbnail=Thumbnail(data["thumbnail"], (scale_x, scale_y)),
                mask=data["mask"],
                level_size=_pair(data["level_size"]),
                level0_size=_pair(data["level0_size"]),
            )

    # ---- results, shard by shard ----------------------------------------------------------------
    def shard_path(self, index: int) -> Path:
        return self.root / f"shard-{index:06d}.npz"

    def has_shard(self, index: int) -> bool:
        return self.shard_path(index).is_file()

    def save_shard(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        self._save_arrays(self.shard_path(index), **arrays)

    def load_shard(self, index: int) -> dict[str, np.ndarray]:
        with np.load(self.shard_path(index)) as data:
            return {name: data[name] for name in data.files}

    @staticmethod
    def _save_arrays(path: Path, **arrays: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, allow_pickle=False, **arrays)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, path)


def _pair(values: np.ndarray) -> tuple[int, int]:
    first, second = (int(v) for v in values.tolist())
    return first, second
