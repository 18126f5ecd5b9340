"""`vitkit slide`: tile-level predictions and embeddings over whole-slide images."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from vitkit.cli._engine import run_slides_on_ray, slides_job
from vitkit.cli._loading import ENTRY_POINT_DEFAULTS, load_classifier
from vitkit.cli._options import add_options, config_from_args
from vitkit.engines.settings import EngineSettings, refuse_unhonoured
from vitkit.errors import UsageError, VitkitError
from vitkit.inference.settings import LoadSettings
from vitkit.slides.settings import SlideBatch, SlideSettings

# LoadSettings fields a slide has no use for: its tiles are pixels read from the slide, not
# image files or URLs.
NOT_FOR_SLIDES = ("jpeg_draft", "allow_private_urls", "allow_hosts")
# EngineSettings fields about Parquet inputs (Ray jobs over image files), not slides.
PARQUET_ONLY = ("image_column", "id_column")

EPILOG = """\
examples:
  vitkit slide slides/*.svs --model runs/vit384/best --out results/ --mpp 0.5
  vitkit slide big.tif --model M --out results/ --level 1 --stride 112 --min-tissue 0.25
  vitkit slide *.ndpi --model dinov2-dir --out emb/ --embed --pool mean   # headless model
  vitkit slide big.tif --model runs/seg/best --out masks/ --stride 192 --mask-level 2   # masks

Per slide, in OUT/<slide name>/: tiles.parquet and tiles.csv (x, y, width, height in level-0
pixels, level, tissue fraction, prob_<class>..., top_class), tiles.geojson (QuPath: File >
Import objects), heatmap-<class>.png over the thumbnail, thumbnail.png, tissue.png,
embeddings.parquet (--embed); a segmentation model also stitches its tile masks (overlapping
tiles blended, no seams) into mask.npy / mask.png at --mask-level, mask-overlay.png, and
classes.geojson (QuPath polygons per class), with class areas (µm² when the slide has its mpp)
in summary.json; and summary.json, written last: a folder without it is not
finished. Run the same command again after a crash or a kill: finished slides are skipped and
an unfinished one continues where it stopped, giving the same outputs. A slide that cannot be
read is reported in one line and the others still run; the exit code is then 1.

--engine ray (pip install 'vitkit[ray]'): slides spread over --workers Ray workers, each running
whole slides (--cpus-per-worker tile-reading threads each), with the same outputs and resume.

Readers: OpenSlide for SVS, NDPI, MRXS, SCN, BIF, VMS, SVSLIDE; tifffile for TIFF, OME-TIFF and
pyramidal TIFF; Pillow for PNG/JPEG (decoded whole, up to 268 Mpx). --mpp needs the slide's
microns per pixel in its metadata; otherwise choose --level (default: level 0).
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "slide",
        help="run a model over whole-slide images (tiles, heatmaps, GeoJSON)",
        description="Classify (or embed) every tissue tile of whole-slide images.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser, SlideBatch)
    add_options(parser, SlideSettings)
    add_options(parser, LoadSettings, exclude=NOT_FOR_SLIDES, defaults=ENTRY_POINT_DEFAULTS)
    add_options(parser, EngineSettings, exclude=PARQUET_ONLY)
    parser.set_defaults(func=run, settings=settings)


def settings(args: argparse.Namespace) -> Any:
    """What the command hands the library: (LoadSettings, SlideSettings, SlideBatch) in this
    process, (SlidesJob, SlideBatch) on Ray; settings that cannot work are refused here."""
    load = config_from_args(LoadSettings, args)
    tiling = config_from_args(SlideSettings, args)
    batch = config_from_args(SlideBatch, args)
    engine = config_from_args(EngineSettings, args)
    refuse_unhonoured(engine.engine, load, engine)
    tiling.check()
    _check_unique_names(batch.paths, batch.out)
    if engine.on_ray:  # slides spread over Ray workers (vitkit.engines.slides)
        return slides_job(load, tiling, batch, engine), batch
    return load, tiling, batch


def run(args: argparse.Namespace) -> int:
    from vitkit.slides import prepare_slide, slide_folder

    # tifffile logs what it finds wrong with a file; the reader's error says it in one line.
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    if args.engine == "ray":
        _refuse_segmentation_on_ray(args)
        job, batch = settings(args)
        return run_slides_on_ray(job, progress=batch.progress)
    load, tiling, batch = settings(args)
    classifier = load_slide_model(load)
    jobs, failures = [], 0
    for slide in batch.paths:  # plan every slide first: bad ones are reported up front
        try:
            job = prepare_slide(slide, classifier, slide_folder(batch.out, slide), tiling)
        except VitkitError as error:
            _report(f"{error}")
            failures += 1
            continue
        if job.restarted:
            _report(f"{slide}: earlier work was for other settings or another model: starting over")
        jobs.append(job)
    failures += _run_jobs(jobs, classifier, tiling, show=batch.progress)
    done = len(batch.slides) - failures
    print(f"{done} of {len(batch.slides)} slides done -> {batch.out}", file=sys.stderr)
    return 1 if failures else 0


def load_slide_model(load: LoadSettings) -> Any:
    """The classifier, or for a segmentation checkpoint its per-pixel runner in the face the
    slide runner reads (masks stitched over the slide, ``vitkit.slides.seg_outputs``)."""
    from vitkit.checkpoints.hf_dpt import is_segmentation_checkpoint

    if not is_segmentation_checkpoint(load.source):
        return load_classifier(load)
    from vitkit.inference import runtime
    from vitkit.inference.segmentation import SegmentationRunner
    from vitkit.slides.seg_tiles import SegmentationTiles

    runtime.tune_process_for_inference(load.device)
    with runtime.loading_threads():
        return SegmentationTiles(SegmentationRunner.from_settings(load), load.source)


def _refuse_segmentation_on_ray(args: argparse.Namespace) -> None:
    from vitkit.checkpoints.hf_dpt import is_segmentation_checkpoint

    load = config_from_args(LoadSettings, args)
    if is_segmentation_checkpoint(load.source):
        raise UsageError("--engine ray: segmentation models run over slides in this process")


def _run_jobs(jobs: list[Any], classifier: Any, settings: Any, *, show: bool) -> int:
    from vitkit.slides import run_slide

    failures = 0
    with SlideProgress(jobs, enabled=show) as progress:
        for job in jobs:
            try:
                result = run_slide(
                    job.slide,
                    classifier,
                    job.out_dir,
                    settings,
                    job=job,
                    progress=progress.for_slide(job),
                )
            except VitkitError as error:
                _report(f"{error} (its finished batches are kept: run again to resume)")
                failures += 1
                continue
            if result.skipped:
                _report(f"{job.slide}: already complete in {job.out_dir}")
            else:
                _report(
                    f"{job.slide}: {result.tiles:,} tiles ({result.tiles_run:,} run now, "
                    f"{result.tiles_per_second:.1f} tiles/s) -> {job.out_dir}"
                )
    return failures


class SlideProgress:
    """Two rich bars on stderr: the slide being run and all slides; tiles, tiles/s, ETA."""

    def __init__(self, jobs: list[Any], *, enabled: bool) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr),
            disable=not enabled,
        )
        total = sum(job.tiles for job in jobs)
        done = sum(job.tiles_done for job in jobs)
        self._overall = self._progress.add_task(
            f"all {len(jobs)} slides", total=total, completed=done, rate=""
        )
        self._done_before = {id(job): job.tiles_done for job in jobs}

    def __enter__(self) -> SlideProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(None, None, None)

    def for_slide(self, job: Any) -> Any:
        task = self._progress.add_task(
            job.slide.name, total=job.tiles, completed=job.tiles_done, rate=""
        )
        start = {"time": time.perf_counter(), "done": job.tiles_done}
        last = {"done": job.tiles_done}

        def update(done: int, total: int) -> None:
            elapsed = time.perf_counter() - start["time"]
            ran = done - start["done"]
            rate = f"{ran / elapsed:.1f} tiles/s" if elapsed > 0 and ran else ""
            self._progress.update(task, completed=done, total=total, rate=rate)
            self._progress.update(self._overall, advance=done - last["done"], rate=rate)
            last["done"] = done

        return update


def _report(message: str) -> None:
    print(f"vitkit slide: {message}", file=sys.stderr)


def _check_unique_names(slides: list[Path], out: Path) -> None:
    from vitkit.slides import slide_folder

    seen: dict[Path, Path] = {}
    for slide in slides:
        folder = slide_folder(out, slide)
        if folder in seen and seen[folder] != slide:
            raise VitkitError(
                f"{seen[folder]} and {slide} would both write to {folder}: run them with "
                "different --out folders"
            )
        seen[folder] = slide
