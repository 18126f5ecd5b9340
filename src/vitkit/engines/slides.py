"""Whole slides spread over Ray workers: ``vitkit slide SLIDES --engine ray``.

A slide is the unit of work: each worker holds the model and runs whole slides with
``vitkit.slides.run_slide``, so a slide's tiles are read, decoded and run on the worker that
opened it (streamed through its reading threads as in one process) and only a small result row
per slide comes back to the driver. Slides go out one at a time, so a worker that finishes early
takes the next one. ``run_slide`` is resumable, which makes the job resumable too: a slide
already complete in its folder is skipped, and a slide whose worker was killed is run again by
Ray on a new worker, continuing from the batches already on disk. A slide that cannot be read is
a row with an error; the other slides go on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitkit.engines.batch import load_for_worker
from vitkit.engines.ray import import_ray, ray_session
from vitkit.errors import EngineError, VitkitError
from vitkit.inference.settings import LoadSettings
from vitkit.slides import SlideSettings, run_slide, slide_folder


class SlideWorker:
    """``map_batches`` class: a batch of slide paths -> one result row per slide."""

    def __init__(
        self, load: LoadSettings, *, out: str, settings: SlideSettings, tune_process: bool = False
    ) -> None:
        self.classifier = load_for_worker(load, tune_process=tune_process)
        self.out = Path(out)
        self.settings = settings

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        rows: dict[str, list[Any]] = {
            key: [] for key in ("slide", "out_dir", "tiles", "tiles_run", "seconds", "error")
        }
        for slide in batch["slide"]:
            out_dir = slide_folder(self.out, Path(slide))
            numbers: list[Any]
            try:
                result = run_slide(slide, self.classifier, out_dir, self.settings)
                numbers = [result.tiles, result.tiles_run, result.seconds, None]
            except VitkitError as error:
                numbers = [0, 0, 0.0, f"{error} (its finished batches are kept: run again)"]
            for key, value in zip(rows, [str(slide), str(out_dir), *numbers], strict=True):
                rows[key].append(value)
        return rows


@dataclass
class SlidesJob:
    """Slides, their output root (one folder per slide, as ``vitkit slide``), the settings, the
    model and how it runs (``LoadSettings``, whole, as each worker loads it), and the Ray
    workers; ``tune_process``: see ``vitkit.engines.batch.load_for_worker``."""

    slides: list[Path]
    out: Path
    settings: SlideSettings
    load: LoadSettings = field(default_factory=LoadSettings)
    tune_process: bool = False
    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    ray_address: str | None = None


def run_slides(
    job: SlidesJob, *, on_slide: Callable[[dict[str, Any]], None] | None = None
) -> list[dict[str, Any]]:
    """Run every slide; returns (and passes to ``on_slide`` as they finish) one row per slide:
    slide, out_dir, tiles, tiles_run, seconds, error (None when it went well)."""
    if not job.slides:
        raise EngineError("no slides given")
    job.settings.check()
    rows: list[dict[str, Any]] = []
    with ray_session(job.ray_address, workers=job.workers, cpus=job.cpus_per_worker):
        for row in slides_dataset(job).iter_rows():
            rows.append(dict(row))
            if on_slide is not None:
                on_slide(rows[-1])
    return rows


def slides_dataset(job: SlidesJob) -> Any:
    ray = import_ray()
    slides = [{"slide": str(path)} for path in job.slides]
    gpus = {"num_gpus": job.gpus_per_worker} if job.gpus_per_worker else {}
    return ray.data.from_items(slides, override_num_blocks=len(slides)).map_batches(
        SlideWorker,
        fn_constructor_kwargs={
            "load": job.load,
            "out": str(job.out),
            "settings": job.settings,
            "tune_process": job.tune_process,
        },
        compute=ray.data.ActorPoolStrategy(size=min(job.workers, len(slides))),
        batch_size=1,  # one slide per call: an idle worker takes the next slide
        batch_format="numpy",
        num_cpus=job.cpus_per_worker,
        **gpus,
    )
