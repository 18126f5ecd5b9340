"""``--engine ray`` for ``vitkit predict`` and ``vitkit embed``: options and the job it runs."""

from __future__ import annotations

import dataclasses
import logging
import sys
from contextlib import ExitStack
from typing import Any

from vitkit.cli._progress import progress_bar
from vitkit.engines.settings import EngineSettings, ImageBatches
from vitkit.errors import UsageError
from vitkit.inference.settings import LoadSettings
from vitkit.slides.settings import SlideBatch, SlideSettings

ENGINE_EPILOG = """\
on Ray (pip install 'vitkit[ray]'): SOURCE is image files, folders, list files (.txt: one path or
URL per line) or Parquet with an image column (bytes, URLs or paths); results go to Parquet shards
in --out DIR with the input's id, and a bad image becomes a row with an error, not a failed job.
Run it again to resume: inputs already in DIR are skipped.
  vitkit {command} photos/ --engine ray --workers 2 --out {out}
  vitkit {command} catalogue.parquet --engine ray --ray-address auto --gpus-per-worker 1 --workers 8 --out {out}
"""


def batch_job(
    task: str,
    load: LoadSettings,
    batches: ImageBatches,
    engine: EngineSettings,
    *,
    top_k: int | None = None,
    pool: str | None = None,
) -> Any:
    """The ``vitkit.engines.ray.BatchJob`` for ``vitkit predict|embed --engine ray``: the load
    settings whole (so every worker loads the model the one-process command would)."""
    from vitkit.engines import require_ray

    require_ray()  # before the engine modules, which need the extra to load
    from vitkit.engines.ray import BatchJob

    out = getattr(batches, "out", None)
    if out is None:
        raise UsageError("--engine ray writes Parquet shards: give an output folder with --out")
    if out.suffix.lower() in (".npy", ".npz", ".parquet"):
        raise UsageError(f"--out {out}: with --engine ray, give a folder for the shards")
    return BatchJob(
        task,  # type: ignore[arg-type]
        list(batches.inputs),
        out,
        load=load,
        top_k=top_k,
        pool=pool,
        workers=batches.workers,
        cpus_per_worker=engine.cpus_per_worker,
        gpus_per_worker=engine.gpus_per_worker,
        batch_size=batches.batch_size,
        image_column=engine.image_column,
        id_column=engine.id_column,
        ray_address=engine.ray_address,
        tune_process=True,  # the workers are the job's processes, as the command's own is
    )


def run_on_ray(job: Any) -> int:
    """``vitkit predict|embed --engine ray``: the job, a progress bar, one summary line."""
    from vitkit.engines.ray import import_ray, run_job

    quiet_ray_data(import_ray())
    with ExitStack() as bars:
        advance: list[Any] = []  # the bar's advance function, once the job knows its size

        def start(total: int) -> None:
            advance.append(bars.enter_context(progress_bar(total, job.task)))

        report = run_job(job, on_start=start, on_rows=lambda n: advance[0](n))
    print(
        f"wrote {report.written} rows ({report.failed} with an error) to {job.out} in "
        f"{report.seconds:.1f} s ({report.images_per_second:.1f} images/s); "
        f"{report.skipped} already there were skipped",
        file=sys.stderr,
    )
    return 1 if report.failed else 0


def slides_job(
    load: LoadSettings, tiling: SlideSettings, batch: SlideBatch, engine: EngineSettings
) -> Any:
    """The ``vitkit.engines.slides.SlidesJob`` for ``vitkit slide --engine ray``."""
    from vitkit.engines import require_ray

    require_ray()  # before the engine modules, which need the extra to load
    from vitkit.engines.slides import SlidesJob

    # --workers counts Ray workers here; each reads its slide's tiles in threads of its own.
    reading = dataclasses.replace(tiling, workers=max(2, int(engine.cpus_per_worker)))
    return SlidesJob(
        batch.paths,
        batch.out,
        reading,
        load=load,
        tune_process=True,
        workers=tiling.workers,
        cpus_per_worker=engine.cpus_per_worker,
        gpus_per_worker=engine.gpus_per_worker,
        ray_address=engine.ray_address,
    )


def run_slides_on_ray(job: Any, *, progress: bool = True) -> int:
    """``vitkit slide --engine ray``: whole slides spread over the workers, a line per slide."""
    from vitkit.engines.ray import import_ray
    from vitkit.engines.slides import run_slides

    quiet_ray_data(import_ray())
    with progress_bar(len(job.slides), "slides on Ray", enabled=progress) as advance:

        def report(row: dict[str, Any]) -> None:
            if row["error"]:
                print(f"vitkit slide: {row['error']}", file=sys.stderr)
            else:
                print(
                    f"vitkit slide: {row['slide']}: {row['tiles']:,} tiles ({row['tiles_run']:,} "
                    f"run now) -> {row['out_dir']}",
                    file=sys.stderr,
                )
            advance(1)

        rows = run_slides(job, on_slide=report)
    failures = sum(1 for row in rows if row["error"])
    print(f"{len(rows) - failures} of {len(rows)} slides done -> {job.out}", file=sys.stderr)
    return 1 if failures else 0


def quiet_ray_data(ray: Any) -> None:
    """The CLI draws its own progress bar: no Ray Data bars and execution logs (an entry point
    may change these process-wide settings; the library does not)."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "bars disabled"
