"""`vitkit slide`: tile-level predictions and embeddings over whole-slide images."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from vitkit.cli._common import (
    MODEL_HELP,
    add_head_options,
    add_precision_option,
    add_threads_option,
    load_classifier,
)
from vitkit.cli._engine import add_engine_options, run_slides_on_ray
from vitkit.errors import VitkitError

# = vitkit.slides.readers.READERS, written out so `vitkit --help` imports nothing heavy.
READER_CHOICES = ("auto", "openslide", "tifffile", "pillow")

EPILOG = """\
examples:
  vitkit slide slides/*.svs --model runs/vit384/best --out results/ --mpp 0.5
  vitkit slide big.tif --model M --out results/ --level 1 --stride 112 --min-tissue 0.25
  vitkit slide *.ndpi --model dinov2-dir --out emb/ --embed --pool mean   # headless model

Per slide, in OUT/<slide name>/: tiles.parquet and tiles.csv (x, y, width, height in level-0
pixels, level, tissue fraction, prob_<class>..., top_class), tiles.geojson (QuPath: File >
Import objects), heatmap-<class>.png over the thumbnail, thumbnail.png, tissue.png,
embeddings.parquet (--embed) and summary.json, written last: a folder without it is not
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
    parser.add_argument("slides", nargs="+", type=Path, help="slide files")
    parser.add_argument("--out", "-o", required=True, type=Path, help="output folder")
    parser.add_argument("--model", "-m", default=None, help=MODEL_HELP)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--level", type=int, default=None, help="pyramid level to read (0: full)")
    where.add_argument(
        "--mpp", type=float, default=None, help="microns per pixel to run at, e.g. 0.5 (20x)"
    )
    parser.add_argument(
        "--tile-size", type=int, default=None, help="tile side in pixels (default: model input)"
    )
    parser.add_argument(
        "--stride", type=int, default=None, help="step between tiles (default: tile size)"
    )
    parser.add_argument(
        "--min-tissue",
        type=float,
        default=0.5,
        help="fraction of a tile that must be tissue for it to run (default 0.5; 0: all)",
    )
    parser.add_argument("--embed", action="store_true", help="also write tile embeddings")
    parser.add_argument(
        "--pool",
        default=None,
        choices=["cls", "mean", "cls+mean", "pooler"],
        help="embedding of a tile (default: the model family's, see `vitkit info`): cls, mean "
        "(of the patch tokens, or of a CNN's feature map: a ResNet's default), cls+mean (both: "
        "Virchow's), pooler (transformers' pooler_output)",
    )
    parser.add_argument("--reader", default="auto", choices=READER_CHOICES, help="slide reader")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--image-size", type=int, default=None, help="run the model at this size")
    add_precision_option(parser)
    add_threads_option(parser)
    add_head_options(parser)
    parser.add_argument(
        "--batch-size", "-b", type=int, default=32, help="tiles per forward (default 32)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="tile-reading threads (default 2); with --engine ray: Ray workers, each a model",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_engine_options(parser, images=False)
    parser.set_defaults(func=run)


def settings_from(args: argparse.Namespace) -> Any:
    from vitkit.slides import SlideSettings

    return SlideSettings(
        level=args.level,
        mpp=args.mpp,
        tile_size=args.tile_size,
        stride=args.stride,
        min_tissue=args.min_tissue,
        batch_size=args.batch_size,
        workers=args.workers,
        embed=args.embed,
        pool=args.pool,
        reader=args.reader,
    )


def run(args: argparse.Namespace) -> int:
    from vitkit.slides import prepare_slide, slide_folder

    # tifffile logs what it finds wrong with a file; the reader's error says it in one line.
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    _check_unique_names(args.slides, args.out)
    settings = settings_from(args)
    settings.check()
    if args.engine == "ray":  # slides spread over Ray workers (vitkit.engines.slides)
        return run_slides_on_ray(args, settings)
    classifier = load_classifier(args)
    jobs, failures = [], 0
    for slide in args.slides:  # plan every slide first: bad ones are reported up front
        try:
            job = prepare_slide(slide, classifier, slide_folder(args.out, slide), settings)
        except VitkitError as error:
            _report(f"{error}")
            failures += 1
            continue
        if job.restarted:
            _report(f"{slide}: earlier work was for other settings or another model: starting over")
        jobs.append(job)
    failures += _run_jobs(jobs, classifier, settings, show=not args.no_progress)
    done = len(args.slides) - failures
    print(f"{done} of {len(args.slides)} slides done -> {args.out}", file=sys.stderr)
    return 1 if failures else 0


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
        import time

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
