"""One slide, start to finish: plan the tissue tiles, stream them through the model, write.

``run_slide(slide, classifier, out_dir)`` is the whole job for one slide and the unit other
engines distribute (one call per slide); it is resumable: killed at any point, the next call
with the same arguments picks up at the first batch not on disk and writes the same outputs an
uninterrupted run would have. ``prepare_slide`` does only the planning (and says how much is
left), so a caller can plan every slide first and show overall progress.

The network runs through the classifier's batched path (``Classifier.probabilities`` /
``embed_tensor``) on batches the checkpoint's own processor made from the tiles' pixels, so a
tile's probabilities are those ``vitkit predict`` gives the same crop saved as a PNG.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitkit.atomic_files import atomic_write_text
from vitkit.errors import NoClassificationHeadError, SlideError, UsageError
from vitkit.models.protocol import check_pool
from vitkit.slides.geometry import choose_geometry
from vitkit.slides.outputs import iter_shards, write_pictures, write_tables
from vitkit.slides.readers import open_slide
from vitkit.slides.readers.base import SlideReader
from vitkit.slides.seg_outputs import (
    MASK_OUTPUTS,
    MaskGeometry,
    mask_geometry,
    stitch_mask,
    write_mask_outputs,
)
from vitkit.slides.settings import SlideSettings
from vitkit.slides.stream import batch_reader, prefetched, tile_preparer
from vitkit.slides.tiler import SlidePlan, plan_tiles
from vitkit.slides.tissue import make_thumbnail
from vitkit.slides.workdir import WorkDir

SUMMARY = "summary.json"
FINAL_OUTPUTS = (
    "tiles.parquet",
    "tiles.csv",
    "tiles.geojson",
    "embeddings.parquet",
    *MASK_OUTPUTS,  # a segmentation model's (vitkit.slides.seg_outputs)
)
NOT_IN_RESULTS = ("workers", "prefetch")  # settings that change the speed, not the numbers
ProgressFn = Callable[[int, int], None]  # (tiles done, tiles in all) for this slide


@dataclass
class SlideJob:
    """A planned slide: where its outputs go and how many tiles are left."""

    slide: Path
    out_dir: Path
    tiles: int
    tiles_done: int
    complete: bool
    restarted: bool = False  # work for other settings or another model was on disk: dropped
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class SlideResult:
    slide: Path
    out_dir: Path
    tiles: int
    tiles_run: int  # in this call (the rest were on disk already)
    seconds: float
    skipped: bool  # the outputs were complete already
    summary: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def tiles_per_second(self) -> float:
        return self.tiles_run / self.seconds if self.seconds > 0 else 0.0


# ---- planning ---------------------------------------------------------------------------------
def model_input_size(classifier: Any) -> int:
    height, width = classifier.processor.size
    return int(max(height, width))


def plan_slide(reader: SlideReader, tile_size: int, settings: SlideSettings) -> SlidePlan:
    """The tissue tiles of an open slide for these settings (raises NoTissueError if none)."""
    geometry = choose_geometry(
        reader, tile_size=tile_size, stride=settings.stride, level=settings.level, mpp=settings.mpp
    )
    thumbnail = make_thumbnail(reader, settings.thumbnail_side)
    return plan_tiles(reader, geometry, thumbnail, settings.min_tissue)


def prepare_slide(
    slide: str | Path, classifier: Any, out_dir: str | Path, settings: SlideSettings
) -> SlideJob:
    """Plan one slide (or find its plan, or its finished outputs, on disk)."""
    settings.check()
    _require_outputs(classifier, settings)
    slide, out_dir = Path(slide), Path(out_dir)
    manifest = make_manifest(slide, classifier, settings)
    finished = _finished_summary(out_dir, manifest)
    if finished is not None:
        tiles = int(finished["tiles"]["run"])
        return SlideJob(slide, out_dir, tiles, tiles, complete=True, manifest=manifest)
    work = WorkDir(out_dir)
    had_work = work.root.is_dir()
    kept = work.start(manifest)
    plan = work.load_plan() if kept else None
    if plan is None:
        try:
            with open_slide(slide, settings.reader) as reader:
                tile_size = settings.tile_size or model_input_size(classifier)
                plan = plan_slide(reader, tile_size, settings)
                if _dense(classifier):  # an impossible --mask-level is refused up front
                    mask_geometry(reader, plan.geometry, settings.mask_level)
        except BaseException:
            work.remove()  # nothing of this slide's is worth keeping
            _remove_if_empty(out_dir)
            raise
        work.save_plan(plan)
    _remove_final_outputs(out_dir)
    shards = shard_ranges(len(plan), settings)
    done = sum(len(tiles) for i, tiles in enumerate(shards) if work.has_shard(i))
    return SlideJob(
        slide, out_dir, len(plan), done, False, restarted=had_work and not kept, manifest=manifest
    )


def make_manifest(slide: Path, classifier: Any, settings: SlideSettings) -> dict[str, Any]:
    """Everything a slide's results depend on; work on disk is reused only if it matches."""
    try:
        stat = slide.stat()
    except OSError:
        raise SlideError(f"{slide}: no such file") from None
    return {
        "slide": {
            "path": str(slide.resolve()),
            "bytes": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
        },
        "settings": {k: v for k, v in asdict(settings).items() if k not in NOT_IN_RESULTS},
        "model": model_identity(classifier),
    }


def model_identity(classifier: Any) -> dict[str, Any]:
    head = classifier.head
    return {
        "name": classifier.name,
        "labels": list(classifier.labels) if head is not None else None,
        "problem_type": head.problem_type if head is not None else None,
        "thresholds": list(head.thresholds) if head is not None and head.thresholds else None,
        "tta": classifier.tta,
        "precision": getattr(classifier, "precision", "fp32"),
        "device": torch.device(classifier.device).type,
        "processor": classifier.processor.to_dict(),
        "processor_mode": getattr(classifier, "processor_mode", None),
        # the architecture as loaded, --model-arg overrides included (global_pool, ...)
        "config": _config_identity(classifier.model.config),
    }


def _config_identity(config: Any) -> Any:
    """A model config as JSON holds it (the manifest is compared with the one on disk)."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return None
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k != "id2label"}
    return json.loads(json.dumps(fields, default=str))


def shard_ranges(tiles: int, settings: SlideSettings) -> list[range]:
    """Consecutive tile ranges, each a whole number of batches (the last may be short)."""
    batch_size = settings.batch_size
    per_shard = batch_size * max(1, settings.shard_tiles // batch_size)
    return [range(start, min(start + per_shard, tiles)) for start in range(0, tiles, per_shard)]


# ---- running ----------------------------------------------------------------------------------
def run_slide(
    slide: str | Path,
    classifier: Any,
    out_dir: str | Path,
    settings: SlideSettings | None = None,
    *,
    progress: ProgressFn | None = None,
    job: SlideJob | None = None,
) -> SlideResult:
    """Tile, run and write one slide into ``out_dir`` (resumable; see the module docstring)."""
    settings = settings or SlideSettings()
    job = job or prepare_slide(slide, classifier, out_dir, settings)
    if job.complete:
        summary = json.loads((job.out_dir / SUMMARY).read_text())
        return SlideResult(job.slide, job.out_dir, job.tiles, 0, 0.0, True, summary)
    work = WorkDir(job.out_dir)
    plan = work.load_plan()
    if plan is None:
        raise SlideError(f"{job.out_dir}: its plan vanished while it was prepared; run again")
    started = time.perf_counter()
    with open_slide(job.slide, settings.reader) as reader:
        ran = _run_tiles(reader, plan, classifier, settings, work, progress)
    seconds = time.perf_counter() - started
    summary = _write_outputs(job, plan, reader, classifier, settings, work, ran, seconds)
    work.remove()
    return SlideResult(job.slide, job.out_dir, job.tiles, ran, seconds, False, summary)


def _run_tiles(
    reader: SlideReader,
    plan: SlidePlan,
    classifier: Any,
    settings: SlideSettings,
    work: WorkDir,
    progress: ProgressFn | None,
) -> int:
    """Run every batch whose shard is not on disk yet; returns the number of tiles run."""
    shards = shard_ranges(len(plan), settings)
    todo = [(i, tiles) for i, tiles in enumerate(shards) if not work.has_shard(i)]
    done = len(plan) - sum(len(tiles) for _, tiles in todo)
    if progress:
        progress(done, len(plan))
    batches = [
        (shard, range(start, min(start + settings.batch_size, tiles.stop)))
        for shard, tiles in todo
        for start in range(tiles.start, tiles.stop, settings.batch_size)
    ]
    read = batch_reader(reader, plan, tile_preparer(classifier))
    mask = mask_geometry(reader, plan.geometry, settings.mask_level) if _dense(classifier) else None
    ahead = settings.prefetch or 2 * settings.workers
    collected: list[dict[str, np.ndarray]] = []
    ran = 0
    for (shard, tiles), pixels in prefetched(
        batches, lambda job: read(job[1]), workers=settings.workers, ahead=ahead
    ):
        collected.append(infer(classifier, pixels, settings, mask))
        ran += len(tiles)
        if tiles.stop == shards[shard].stop:
            work.save_shard(
                shard, {k: np.concatenate([c[k] for c in collected]) for k in collected[0]}
            )
            collected = []
        if progress:
            progress(done + ran, len(plan))
    return ran


def infer(
    classifier: Any,
    pixels: torch.Tensor,
    settings: SlideSettings,
    mask: MaskGeometry | None = None,
) -> dict[str, np.ndarray]:
    """Class probabilities (the head's softmax or sigmoid, TTA views averaged: what ``vitkit
    predict`` reports) and, with ``embed``, the pooled embeddings of one batch; a segmentation
    model's per-pixel maps on the ``mask`` grid (and each tile's class shares)."""
    arrays = {}
    if mask is not None:
        arrays.update(classifier.tile_arrays(pixels, mask.tile))
    elif classifier.has_head:
        arrays["probabilities"] = classifier.probabilities(pixels).cpu().numpy()
    if settings.embed:
        arrays["embeddings"] = classifier.embed_tensor(pixels, settings.pool).cpu().numpy()
    return arrays


# ---- writing ----------------------------------------------------------------------------------
def _write_outputs(
    job: SlideJob,
    plan: SlidePlan,
    reader: SlideReader,
    classifier: Any,
    settings: SlideSettings,
    work: WorkDir,
    ran: int,
    seconds: float,
) -> dict[str, Any]:
    labels = list(classifier.labels) if classifier.has_head else None
    shards = iter_shards(shard_ranges(len(plan), settings), work.load_shard)
    classes = write_tables(job.out_dir, plan, shards, labels)
    heatmaps = write_pictures(job.out_dir, plan, shards, labels, classes)
    summary = build_summary(job, plan, reader, classifier, settings, classes)
    if _dense(classifier) and labels:
        summary["mask"] = _write_mask(job.out_dir, plan, reader, shards, labels, settings)
    summary["outputs"] = sorted(
        [name for name in FINAL_OUTPUTS if (job.out_dir / name).exists()]
        + ["thumbnail.png", "tissue.png", *heatmaps]
    )
    summary["timing"] = {
        "seconds": round(seconds, 3),
        "tiles_run": ran,
        "tiles_resumed": len(plan) - ran,
        "tiles_per_second": round(ran / seconds, 2) if seconds > 0 else None,
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    atomic_write_text(job.out_dir / SUMMARY, json.dumps(summary, indent=2) + "\n")
    return summary


def build_summary(
    job: SlideJob,
    plan: SlidePlan,
    reader: SlideReader,
    classifier: Any,
    settings: SlideSettings,
    classes: dict[str, Any],
) -> dict[str, Any]:
    geometry = plan.geometry
    scale_x, scale_y = plan.thumbnail.level0_per_pixel
    tissue_pixels = float(plan.mask.sum()) * scale_x * scale_y
    mpp = reader.mpp
    return {
        "complete": True,
        "slide": str(job.slide),
        "reader": reader.name,
        "format": reader.vendor,
        "size": list(plan.level0_size),
        "mpp": mpp,
        "levels": [[lv.width, lv.height, round(lv.downsample, 6)] for lv in reader.levels],
        "tiles": {
            "level": geometry.level,
            "read_size": geometry.read_size,
            "read_stride": geometry.read_stride,
            "size_level0": geometry.level0_size,
            "mpp": geometry.mpp,
            "model_input": list(classifier.processor.size),
            "grid": list(plan.grid_shape),
            "run": len(plan),
        },
        "tissue": {
            "fraction_of_slide": round(float(plan.mask.mean()), 6),
            "area_level0_pixels": round(tissue_pixels),
            "area_mm2": None if mpp is None else round(tissue_pixels * mpp * mpp / 1e6, 4),
        },
        "classes": classes,
        "model": {k: v for k, v in job.manifest["model"].items() if k != "processor"},
        "settings": asdict(settings),
        "manifest": job.manifest,
    }


def _dense(classifier: Any) -> bool:
    """A segmentation model (``vitkit.slides.seg_tiles.SegmentationTiles``)."""
    return bool(getattr(classifier, "dense", False))


def _write_mask(
    out_dir: Path,
    plan: SlidePlan,
    reader: SlideReader,
    shards: Any,
    labels: list[str],
    settings: SlideSettings,
) -> dict[str, Any]:
    """The stitched mask and its pictures, polygons and areas (``vitkit.slides.seg_outputs``)."""
    geometry = mask_geometry(reader, plan.geometry, settings.mask_level)
    tiles = (
        (plan.x[t.start : t.stop], plan.y[t.start : t.stop], arrays["maps"])
        for t, arrays in shards()
    )
    stitch_mask(out_dir, geometry, tiles, len(labels))
    return write_mask_outputs(out_dir, geometry, labels, plan.thumbnail.pixels, reader.mpp)


# ---- the folder's state ---------------------------------------------------------------------
def _finished_summary(out_dir: Path, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The summary of a complete earlier run with the same manifest, else None."""
    try:
        summary = json.loads((out_dir / SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    if summary.get("manifest") == manifest and summary.get("complete"):
        WorkDir(out_dir).remove()  # a run killed after its summary: the work is not needed
        return dict(summary)
    return None


def _remove_final_outputs(out_dir: Path) -> None:
    """Before a run: no summary (so the folder reads incomplete) and no outputs of another run."""
    (out_dir / SUMMARY).unlink(missing_ok=True)
    for name in FINAL_OUTPUTS:
        (out_dir / name).unlink(missing_ok=True)
    for picture in out_dir.glob("*.png"):
        if picture.name.startswith("heatmap-") or picture.name in (
            "thumbnail.png",
            "tissue.png",
            "mask.png",
            "mask-overlay.png",
        ):
            picture.unlink()


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty (earlier outputs) or already gone
        folder.rmdir()


def _require_outputs(classifier: Any, settings: SlideSettings) -> None:
    """Refuse before any tile is read: a headless model without --embed, a pool it lacks."""
    if not classifier.has_head and not settings.embed:
        raise NoClassificationHeadError(
            f"{classifier.name} has no classification head: run it with --embed "
            "(tile embeddings) or fine-tune a head with `vitkit train`"
        )
    if settings.embed:
        check_pool(classifier.model, settings.pool or classifier.default_pool)
    if settings.mask_level is not None and not _dense(classifier):
        raise UsageError(
            f"--mask-level: for segmentation models; {classifier.name} classifies whole tiles"
        )


def slide_folder(out_root: Path, slide: Path) -> Path:
    """OUT/<slide name without its extension(s)>: 'a.ome.tif' -> OUT/a."""
    name = slide.name
    for suffix in (".ome.tiff", ".ome.tif", slide.suffix):
        if suffix and name.lower().endswith(suffix.lower()) and len(name) > len(suffix):
            return out_root / name[: -len(suffix)]
    return out_root / name
