"""Tiles read, decoded and preprocessed ahead of the model, in worker threads, in bounded memory.

``prefetched(jobs, work, workers=..., ahead=...)`` runs ``work(job)`` in a thread pool, at most
``ahead`` jobs beyond the one the caller holds, and yields the results in job order. Here a job
is one batch of tiles and ``work`` reads its regions and turns them into the model's float
batch, so while the model runs batch k, batches k+1..k+ahead are being read. Memory is that of
``ahead + 1`` batches whatever the slide's size. Threads suffice: the decoders (libjpeg-turbo,
zlib, OpenSlide through ctypes) and torch's resize release the GIL.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch

from vitkit.slides.readers.base import SlideReader
from vitkit.slides.tiler import SlidePlan

Job = TypeVar("Job")
Result = TypeVar("Result")
Prepare = Callable[[list[np.ndarray]], torch.Tensor]


def _one_torch_thread() -> None:
    # A worker's torch ops (the resize) are small; OpenMP threads of their own would only
    # fight the model's threads for the cores. The setting is per calling thread.
    torch.set_num_threads(1)


def prefetched(
    jobs: Iterable[Job], work: Callable[[Job], Result], *, workers: int, ahead: int
) -> Iterator[tuple[Job, Result]]:
    """``(job, work(job))`` in order, computed up to ``ahead`` jobs ahead in ``workers`` threads.

    A job's exception is raised when its turn comes; jobs not yet started are then cancelled.
    """
    remaining = iter(jobs)
    with ThreadPoolExecutor(
        max_workers=max(1, workers),
        initializer=_one_torch_thread,
        thread_name_prefix="vitkit-slide-read",
    ) as pool:
        pending: deque[tuple[Job, Future[Result]]] = deque()

        def submit_next() -> None:
            for job in remaining:
                pending.append((job, pool.submit(work, job)))
                return

        for _ in range(max(1, ahead)):
            submit_next()
        try:
            while pending:
                job, future = pending.popleft()
                result = future.result()
                submit_next()  # keep the queue full while the caller works on this one
                yield job, result
        finally:
            for _, future in pending:
                future.cancel()


def batch_reader(
    reader: SlideReader, plan: SlidePlan, prepare: Prepare
) -> Callable[[range], torch.Tensor]:
    """``work`` for ``prefetched``: tile indices -> the model's float batch for those tiles."""
    level, size = plan.geometry.level, plan.geometry.read_size

    def read_batch(indices: range) -> torch.Tensor:
        tiles = [reader.read(level, int(plan.x[i]), int(plan.y[i]), size, size) for i in indices]
        return prepare(tiles)

    return read_batch


def tile_preparer(classifier: object) -> Prepare:
    """RGB tiles -> the classifier's model input, through its own processor and mode, so a tile
    gets exactly the numbers ``vitkit predict`` gives the same pixels saved as a PNG."""
    processor = classifier.processor  # type: ignore[attr-defined]
    mode = getattr(classifier, "processor_mode", None) or processor.mode
    if mode == "fast":
        # The layout a decoded PNG has (a channels-last view), so torch's resize takes the same
        # path, and the same batched assembly and normalisation as predict.
        return lambda tiles: processor.from_uint8(
            [torch.from_numpy(tile).permute(2, 0, 1) for tile in tiles]
        )
    return lambda tiles: processor(list(tiles), mode=mode)
