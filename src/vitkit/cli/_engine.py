"""``--engine ray`` for ``vitkit predict`` and ``vitkit embed``: options and the job it runs."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from vitkit.errors import EngineError

ENGINE_EPILOG = """\
on Ray (pip install 'vitkit[ray]'): SOURCE is image files, folders, list files (.txt: one path or
URL per line) or Parquet with an image column (bytes, URLs or paths); results go to Parquet shards
in --out DIR with the input's id, and a bad image becomes a row with an error, not a failed job.
Run it again to resume: inputs already in DIR are skipped.
  vitkit {command} photos/ --engine ray --workers 2 --out {out}
  vitkit {command} catalogue.parquet --engine ray --ray-address auto --gpus-per-worker 1 --workers 8 --out {out}
"""


def add_engine_options(
    parser: argparse.ArgumentParser, *, add_out: bool = False, images: bool = True
) -> None:
    """The Ray options; ``add_out``: the command has no --out of its own (predict); ``images``:
    the options about image sources (Parquet columns, URLs), not for slides."""
    group = parser.add_argument_group("batch jobs on Ray Data (--engine ray)")
    group.add_argument(
        "--engine",
        default="local",
        choices=["local", "ray"],
        help="local: this process (default); ray: a Ray Data job over Ray workers",
    )
    if add_out:
        group.add_argument(
            "--out", "-o", type=Path, default=None, help="output folder (with --engine ray)"
        )
    group.add_argument(
        "--ray-address",
        default=None,
        help="auto or ray://HOST:10001: run on that Ray cluster (default: start a local Ray "
        "for the job and stop it at the end)",
    )
    group.add_argument(
        "--cpus-per-worker",
        type=float,
        default=1.0,
        help="CPUs per Ray worker: its decoding threads and torch threads (default 1)",
    )
    group.add_argument(
        "--gpus-per-worker", type=float, default=0.0, help="GPUs per Ray worker (default 0)"
    )
    if images:
        add_image_source_options(group)


def add_image_source_options(group: Any) -> None:
    group.add_argument(
        "--image-column", default=None, help="Parquet column of image bytes, URLs or paths"
    )
    group.add_argument(
        "--id-column",
        default=None,
        help="Parquet column naming each row (default: id, else the URL/path, else a hash of the bytes)",
    )
    group.add_argument(
        "--allow-private-urls",
        action="store_true",
        help="fetch image URLs from private and loopback addresses too (internal stores)",
    )
    group.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="HOST",
        help="fetch URLs from this host even if it resolves to a private address (repeatable)",
    )


def run_on_ray(args: argparse.Namespace, task: str, model_options: dict[str, Any]) -> int:
    """``vitkit predict|embed --engine ray``: the job, a progress bar, one summary line."""
    from vitkit.cli._common import progress_bar
    from vitkit.engines.ray import BatchJob, import_ray, run_job

    if args.out is None:
        raise EngineError("--engine ray writes Parquet shards: give an output folder with --out")
    if args.out.suffix.lower() in (".npy", ".npz", ".parquet"):
        raise EngineError(f"--out {args.out}: with --engine ray, give a folder for the shards")
    quiet_ray_data(import_ray())
    job = BatchJob(
        task,  # type: ignore[arg-type]
        list(args.inputs),
        args.out,
        model=model_name(args.model),
        model_options={**model_options, **worker_model_options(args)},
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
        batch_size=args.batch_size,
        image_column=args.image_column,
        id_column=args.id_column,
        ray_address=args.ray_address,
    )
    with ExitStack() as bars:
        advance: list[Any] = []  # the bar's advance function, once the job knows its size

        def start(total: int) -> None:
            advance.append(bars.enter_context(progress_bar(total, task)))

        report = run_job(job, on_start=start, on_rows=lambda n: advance[0](n))
    print(
        f"wrote {report.written} rows ({report.failed} with an error) to {args.out} in "
        f"{report.seconds:.1f} s ({report.images_per_second:.1f} images/s); "
        f"{report.skipped} already there were skipped",
        file=sys.stderr,
    )
    return 1 if report.failed else 0


def run_slides_on_ray(args: argparse.Namespace, settings: Any) -> int:
    """``vitkit slide --engine ray``: whole slides spread over the workers, a line per slide."""
    from vitkit.cli._common import progress_bar
    from vitkit.engines.ray import import_ray
    from vitkit.engines.slides import SlidesJob, run_slides

    quiet_ray_data(import_ray())
    # --workers counts Ray workers here; each reads its slide's tiles in threads of its own.
    reading = dataclasses.replace(settings, workers=max(2, int(args.cpus_per_worker)))
    job = SlidesJob(
        list(args.slides),
        args.out,
        reading,
        model=model_name(args.model),
        model_options=worker_model_options(args),
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
        ray_address=args.ray_address,
    )
    with progress_bar(len(job.slides), "slides on Ray") as advance:

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
    print(f"{len(rows) - failures} of {len(rows)} slides done -> {args.out}", file=sys.stderr)
    return 1 if failures else 0


def worker_model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The model options of the one-process command, for ``vitkit.engines.batch.load_for_worker``."""
    from vitkit.inference.heads import parse_thresholds

    threshold = getattr(args, "threshold", None)
    options = {
        "problem_type": getattr(args, "problem_type", None),
        "threshold": parse_thresholds(threshold) if threshold is not None else None,
        "tta": getattr(args, "tta", "none"),
        "precision": args.precision,
        "image_size": args.image_size,
        "jpeg_draft": getattr(args, "jpeg_draft", False),
        "device": args.device,
        "threads": getattr(args, "threads", "auto"),
        "tune_process": True,  # what load_classifier does for the one-process command
    }
    if hasattr(args, "allow_host"):
        options["allow_private_urls"] = args.allow_private_urls
        options["allow_hosts"] = list(args.allow_host)
    return options


def model_name(model: str | None) -> str:
    from vitkit.inference.classifier import default_model_name

    return model or default_model_name()


def quiet_ray_data(ray: Any) -> None:
    """The CLI draws its own progress bar: no Ray Data bars and execution logs (an entry point
    may change these process-wide settings; the library does not)."""
    import logging

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "bars disabled"
