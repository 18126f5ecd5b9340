"""Batch prediction and embedding on Ray Data: ``vitkit predict|embed SOURCE --engine ray``.

    from vitkit.engines.ray import BatchJob, run_job

    settings = LoadSettings(model="runs/vit/best", precision="int8")
    report = run_job(BatchJob("predict", ["photos/"], Path("out/"), load=settings, workers=4))

The pipeline: the source's rows (``{id, image}``: paths, URLs or encoded bytes, never pixels, so
the object store holds kilobytes per image) stream through an actor pool of ``VitkitPredictor`` /
``VitkitEmbedder`` (the model loaded once per actor; decoding happens in the actor, or, for GPU
workers, in CPU tasks of its own just before: ``vitkit.engines.decode``), and the
driver writes the results as Parquet shards (``ShardWriter``: each shard whole, each input once,
resumable). A killed worker is replaced and its batches retried by Ray Data; the writer drops any
row it already holds.

Ray is an optional dependency (``pip install 'vitkit[ray]'``): this module imports it only inside
functions (``import_ray``), so it loads, and says how to install Ray, without it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any, Literal

from vitkit.engines import INSTALL_HINT
from vitkit.engines.batch import VitkitEmbedder, VitkitPredictor, load_for_worker
from vitkit.engines.decode import can_split, decode_images
from vitkit.engines.ids import IdSet
from vitkit.engines.shards import ShardWriter
from vitkit.engines.sources import ImageItems, ParquetImages, Source, open_source, read_pieces
from vitkit.errors import EngineError
from vitkit.inference.settings import LoadSettings, output_identity

__all__ = ["BatchJob", "JobReport", "VitkitEmbedder", "VitkitPredictor", "ray_session", "run_job"]

# A local Ray gets a small object store: rows are paths or encoded images (KBs each) and Ray
# Data's backpressure keeps few blocks in flight, so 512 MiB is room to spare; Ray's default
# (30% of RAM) would take memory the model workers need.
LOCAL_OBJECT_STORE_BYTES = 512 * 2**20
MAX_BLOCKS = 1024  # blocks for a list of inputs: enough to balance workers, few enough to plan fast


@dataclass
class BatchJob:
    """One batch job: what to compute, on what, where the shards go, and on how many workers.

    ``load``: the model and how it runs, whole (``LoadSettings``: precision, image_size, tta,
    overrides, URL fetching...), as every worker loads it; ``top_k`` (predict) or ``pool``
    (embed): what each row holds. ``ray_address``: None starts a local Ray on this machine for
    the job (unless the caller already runs one); ``"auto"`` or ``ray://host:10001`` joins a
    cluster. ``tune_process``: the workers make the process-wide inference settings
    (``runtime.tune_process_for_inference``), as a command's own process does.
    """

    task: Literal["predict", "embed"]
    inputs: list[str]
    out: Path
    load: LoadSettings = field(default_factory=LoadSettings)
    top_k: int | None = None
    pool: str | None = None
    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    batch_size: int = 16
    image_column: str | None = None
    id_column: str | None = None
    ray_address: str | None = None
    shard_rows: int = 10_000
    # Decode in CPU tasks of their own (vitkit.engines.decode) rather than in the model workers;
    # None: when the workers have GPUs (and the checkpoint's processor makes one fixed size).
    decode_stage: bool | None = None
    tune_process: bool = False
    # Shorthand for load=LoadSettings(model=...); the former model_options dict is refused with
    # a pointer to what replaced it.
    model: InitVar[str | None] = None
    model_options: InitVar[dict[str, Any] | None] = None

    def __post_init__(self, model: str | None, model_options: dict[str, Any] | None) -> None:
        if model_options is not None:
            raise EngineError(
                "BatchJob(model_options=...) is replaced by load=LoadSettings(...) (precision, "
                "tta, overrides, ...) and the job's own top_k / pool / tune_process fields"
            )
        if model is not None:
            self.load = self.load.replace(model=str(model))

    def identity(self) -> dict[str, Any]:
        """What the outputs depend on (_vitkit_job.json): a resumed job must not change it.
        Every LoadSettings field but those that only decide how it runs (device, threads, URL
        fetching), as JSON holds them."""
        task = {"top_k": self.top_k} if self.task == "predict" else {"pool": self.pool}
        identity = {"task": self.task, **output_identity(self.load), **task}
        return dict(json.loads(json.dumps(identity)))

    def worker_options(self) -> dict[str, Any]:
        """The keywords of ``VitkitPredictor`` / ``VitkitEmbedder`` for this job."""
        task = {"top_k": self.top_k} if self.task == "predict" else {"pool": self.pool}
        return {**task, "tune_process": self.tune_process}


@dataclass
class JobReport:
    written: int  # rows written by this run
    failed: int  # of which the image could not be read (the ``error`` column)
    skipped: int  # rows already in the output folder before this run
    seconds: float
    shards: list[Path]

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds else 0.0


def run_job(
    job: BatchJob,
    *,
    on_start: Callable[[int], None] | None = None,
    on_rows: Callable[[int], None] | None = None,
) -> JobReport:
    """Run ``job`` to the end. Progress: ``on_start(rows to do, about)``, then ``on_rows(n)`` as
    rows are written."""
    if job.workers < 1 or job.batch_size < 1:
        raise EngineError("--workers and --batch-size must be at least 1")
    source = open_source(job.inputs, image_column=job.image_column, id_column=job.id_column)
    writer = ShardWriter(job.out, job.identity(), shard_rows=job.shard_rows)
    start = time.monotonic()
    total = len(source.ids) if isinstance(source, ImageItems) else source.rows
    if on_start is not None:
        on_start(max(0, total - writer.previous_rows))
    written = failed = 0
    if total > writer.previous_rows or isinstance(source, ParquetImages):
        with ray_session(job.ray_address, workers=job.workers, cpus=job.cpus_per_worker):
            dataset = build_dataset(job, source, writer.written)
            for block in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
                # Paths and URLs pass through the model's columns: the id names them already.
                fresh = writer.add(
                    block.drop_columns(["image"] if "image" in block.schema.names else [])
                )
                written += fresh.num_rows
                failed += fresh.num_rows - fresh.column("error").null_count
                if on_rows is not None:
                    on_rows(fresh.num_rows)
    writer.flush()
    return JobReport(written, failed, writer.previous_rows, time.monotonic() - start, writer.shards)


# ---- the dataset -------------------------------------------------------------------------------
def build_dataset(job: BatchJob, source: Source, done: IdSet) -> Any:
    """Source rows not yet written -> the model's actor pool. Lazy: nothing runs until iterated."""
    ray = import_ray()
    if isinstance(source, ParquetImages):
        rows = parquet_dataset(ray, source, done, job)
    else:
        rows = items_dataset(ray, source, done, job)
    if job.decode_stage or (job.decode_stage is None and job.gpus_per_worker > 0):
        rows = with_decode_stage(ray, rows, job)
    model_class = VitkitPredictor if job.task == "predict" else VitkitEmbedder
    options = {"decode_threads": max(1, math.floor(job.cpus_per_worker)), **job.worker_options()}
    gpus = {"num_gpus": job.gpus_per_worker} if job.gpus_per_worker else {}
    return rows.map_batches(
        model_class,
        fn_constructor_kwargs={"model": job.load, "image_column": "image", **options},
        compute=ray.data.ActorPoolStrategy(size=job.workers),
        batch_size=job.batch_size,
        batch_format="numpy",
        num_cpus=job.cpus_per_worker,
        **gpus,
    )


def with_decode_stage(ray: Any, rows: Any, job: BatchJob) -> Any:
    """Rows -> rows with ``pixels``, decoded in one-CPU tasks all over the cluster, when the
    checkpoint's preprocessing allows it (else the workers decode, as without a stage)."""
    # The driver loads the checkpoint once (on its CPU) for its preprocessing settings.
    probe = load_for_worker(job.load.replace(device="cpu", precision="fp32"))
    if not can_split(probe.processor, probe.processor_mode):
        return rows
    return rows.map_batches(
        decode_images,
        fn_kwargs={"processor": probe.processor, "image_column": "image"},
        batch_size=job.batch_size,
        batch_format="numpy",
        num_cpus=1,
    )


def parquet_dataset(ray: Any, source: ParquetImages, done: IdSet, job: BatchJob) -> Any:
    """One task per row group, reading it in blocks of a few batches. Not ``read_parquet``: its
    file listing wants a CPU, and a pool of workers that takes every CPU (the usual set-up on one
    machine) would wait forever for its own input. Reading is I/O and hashing ids cheap: the
    tasks reserve no CPU."""
    pieces = [{"path": path, "row_group": group} for path, group in source.pieces]
    return ray.data.from_items(pieces, override_num_blocks=max(1, len(pieces))).map_batches(
        read_pieces,
        batch_size=1,
        batch_format="numpy",
        num_cpus=0,
        fn_kwargs={
            "source": dataclasses.replace(source, pieces=[]),  # each task gets its own pieces
            "done": done,
            "rows_per_block": 4 * job.batch_size,
        },
    )


def items_dataset(ray: Any, source: ImageItems, done: IdSet, job: BatchJob) -> Any:
    todo = ~done.contains(source.ids) if len(done) else [True] * len(source.ids)
    rows = [
        {"id": i, "image": image}
        for i, image, keep in zip(source.ids, source.images, todo, strict=True)
        if keep
    ]
    # A block is a unit of work for one worker: about a batch each, at least one per worker.
    blocks = max(job.workers, math.ceil(len(rows) / job.batch_size))
    return ray.data.from_items(rows, override_num_blocks=max(1, min(blocks, len(rows), MAX_BLOCKS)))


# ---- the Ray session ---------------------------------------------------------------------------
def import_ray() -> Any:
    """``ray`` with ``ray.data`` loaded, or an EngineError saying how to install it."""
    try:
        import ray  # optional dependency: vitkit[ray]
        import ray.data
    except ImportError as error:
        raise EngineError(INSTALL_HINT) from error
    return ray


@contextmanager
def ray_session(
    address: str | None = None, *, workers: int = 1, cpus: float = 1.0
) -> Iterator[Any]:
    """A Ray to run on: the caller's if one is initialised (left running), else a cluster at
    ``address``, else a local Ray with this machine's CPUs and a small object store; the last
    two are shut down on exit. ``workers`` x ``cpus`` must fit a local machine."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    if address:
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except ConnectionError as error:
            raise EngineError(
                f"no Ray cluster at --ray-address {address} ({error}); start one with "
                "`ray start --head`, or leave out --ray-address for a local Ray"
            ) from error
    else:
        machine = usable_cpus()
        if workers * cpus > machine:
            raise EngineError(
                f"--workers {workers} x {cpus:g} CPU each needs more than the {machine} CPUs "
                "of this machine: use fewer workers, or a cluster (--ray-address)"
            )
        ray.init(
            num_cpus=machine,
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            include_dashboard=False,
            logging_level=logging.WARNING,
            # Ray runs workers at nice 15 (for its own daemons' sake); here the workers ARE the
            # job, and at 15 they got a third of the CPU the one-process command got on a busy
            # machine. `ray job submit` likewise runs its drivers at 0.
            _system_config={"worker_niceness": 0},
        )
    try:
        yield ray
    finally:
        ray.shutdown()


def usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
