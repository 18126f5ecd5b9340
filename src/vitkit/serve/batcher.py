"""Dynamic micro-batching: requests arriving together share one forward pass.

Request handlers (on the event loop) ``await batcher.submit(...)`` with already-preprocessed
pixels. One worker thread owns the model: it takes the oldest job, then keeps taking jobs until
``max_batch_size`` images are gathered or ``max_delay_s`` has passed since that first job, runs
them as one batch, and hands each job its slice of the result through its asyncio future.
It waits only while more jobs are on their way (``expecting``: the service's requests being
decoded): a lone request runs at once instead of sitting out the delay.

Why one thread: a model on one device runs one forward pass at a time anyway; a single owner
means no locks around it and batches as large as the load allows. Why a bounded queue: under
overload, answering 503 at once beats letting latency grow without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

from vitkit.inference.heads import trim_answer
from vitkit.serve.errors import DeadlineExceeded, Overloaded

log = logging.getLogger("vitkit.serve")

RunBatch = Callable[[Hashable, torch.Tensor, int], list[Any]]
"""(operation, pixels (B,3,H,W), top_k) -> one result per image."""


@dataclass
class _Job:
    operation: Hashable  # ("predict",) or ("embed", pool): only equal operations share a batch
    pixels: torch.Tensor
    top_k: int
    deadline: float  # time.monotonic() after which nobody waits for the answer
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[Any]] = field(repr=False)

    @property
    def size(self) -> int:
        return int(self.pixels.shape[0])

    def abandoned(self, now: float) -> bool:
        return self.future.cancelled() or now > self.deadline

    def resolve(self, result: list[Any] | BaseException) -> None:
        # RuntimeError: the loop is closed (server shutting down), so nobody is waiting.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(_settle, self.future, result)


def _settle(future: asyncio.Future[list[Any]], result: list[Any] | BaseException) -> None:
    if future.done():  # cancelled by the handler's deadline meanwhile
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


_STOP = object()


class MicroBatcher:
    """Gathers jobs into batches for ``run_batch``, in a single worker thread."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int = 8,
        max_delay_s: float = 0.005,
        max_queue: int = 64,
        on_batch: Callable[[int, float], None] | None = None,
        expecting: Callable[[], int] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_delay_s < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1, max_delay_s >= 0")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.on_batch = on_batch  # (images in batch, seconds) for metrics
        # jobs on their way to submit (None: unknown, always wait up to max_delay_s)
        self.expecting = expecting
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._carry: _Job | None = None  # a job that did not fit in the previous batch
        self._thread = threading.Thread(target=self._work, name="vitkit-model", daemon=True)

    # ---- the event-loop side ----------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def qsize(self) -> int:
        return self._queue.qsize()

    async def submit(
        self, operation: Hashable, pixels: torch.Tensor, *, top_k: int = 5, deadline: float
    ) -> list[Any]:
        """The results for ``pixels`` (one per image); Overloaded or DeadlineExceeded otherwise."""
        loop = asyncio.get_running_loop()
        job = _Job(operation, pixels, top_k, deadline, loop, loop.create_future())
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise Overloaded(
                f"the prediction queue is full ({self._queue.maxsize} waiting): retry shortly"
            ) from None
        remaining = deadline - time.monotonic()
        try:
            return await asyncio.wait_for(job.future, timeout=max(remaining, 0.0))
        except TimeoutError:  # = TimeoutError from 3.11; distinct on 3.10
            raise DeadlineExceeded("the model did not answer before the request deadline") from None

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the jobs already queued, then end the worker thread."""
        if not self._thread.is_alive():
            return
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.warning("batcher queue still full at shutdown; stopping without draining")
            return
        self._thread.join(timeout=timeout)

    # ---- the worker thread ------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            batch, stopping = self._gather()
            if batch:
                try:
                    self._run(batch)
                except Exception:  # never let one bad batch kill the only model thread
                    log.exception("model worker: unexpected error")
            if stopping:
                return

    def _next(self, timeout: float | None) -> Any:
        if self._carry is not None:
            job, self._carry = self._carry, None
            return job
        if timeout is None:
            return self._queue.get()
        if timeout <= 0:
            return self._queue.get_nowait()
        return self._queue.get(timeout=timeout)

    def _gather(self) -> tuple[list[_Job], bool]:
        """(jobs for one batch, whether the stop sentinel was reached)."""
        first = self._next(None)
        if first is _STOP:
            return [], True
        batch, images = [first], first.size
        closes_at = time.monotonic() + self.max_delay_s
        while images < self.max_batch_size:
            # nothing on its way: take what is queued, wait for nothing
            wait = closes_at - time.monotonic() if self._more_coming() else 0.0
            try:
                job = self._next(wait)
            except queue.Empty:
                break
            if job is _STOP:
                return batch, True
            if images + job.size > self.max_batch_size:
                self._carry = job  # first in line for the next batch
                break
            batch.append(job)
            images += job.size
        return batch, False

    def _more_coming(self) -> bool:
        return self.expecting is None or self.expecting() > 0

    def _run(self, batch: list[_Job]) -> None:
        now = time.monotonic()
        live = []
        for job in batch:
            if job.abandoned(now):  # the client gave up: do not spend the model on it
                job.resolve(DeadlineExceeded("the request deadline passed while queued"))
            else:
                live.append(job)
        groups: dict[Hashable, list[_Job]] = {}
        for job in live:
            groups.setdefault(job.operation, []).append(job)
        for operation, jobs in groups.items():
            self._run_group(operation, jobs)

    def _run_group(self, operation: Hashable, jobs: list[_Job]) -> None:
        start = time.perf_counter()
        try:
            pixels = torch.cat([job.pixels for job in jobs]) if len(jobs) > 1 else jobs[0].pixels
            results = self.run_batch(operation, pixels, max(job.top_k for job in jobs))
        except Exception as error:  # deliver to every waiter; the worker must survive
            log.exception("batch of %d jobs failed", len(jobs))
            for job in jobs:
                job.resolve(error)
            return
        if self.on_batch is not None:
            self.on_batch(int(pixels.shape[0]), time.perf_counter() - start)
        offset = 0
        for job in jobs:
            mine = results[offset : offset + job.size]
            offset += job.size
            if operation == ("predict",):
                # the batch ran at its largest k; labels that pass a threshold always stay
                mine = [trim_answer(top, job.top_k) for top in mine]
            job.resolve(mine)
