"""The state behind the routes, and the life of a prediction request.

1. readiness: 503 + Retry-After at once while the models load (nothing is read);
2. the inputs arrive: the body streams into spools (``vitkit.serve.uploads``) under its byte
   cap, deadline and minimum rate, or the ``image_url`` is fetched on the event loop. Nothing
   is held for the model yet: a slow client costs a connection and a spool, not a queue slot;
3. admission: 503 + Retry-After if ``max_queue`` requests are already admitted; from here on,
   one deadline (``request_timeout``) covers the rest: 504 when it passes;
4. the model's runner (``vitkit.serve.runner``) decodes and preprocesses in its decode threads,
   each image within the service-wide pixel budget (``PixelBudget``), never on the event loop;
5. the pixels join that model's micro-batcher queue; its model thread runs them with whatever
   else arrived meanwhile.

What is shared by every model: admission (``max_queue``), the pixel budget, the upload spools
and the URL fetch limits, so that the memory bound does not grow with the number of models
beyond each model's own weights, activations and decode threads.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

from vitkit.errors import ServeSettingsError
from vitkit.images.fetch import FetchLimiter
from vitkit.inference.classifier import load_settings
from vitkit.serve.errors import (
    BadInput,
    DeadlineExceeded,
    ModelNotFound,
    Overloaded,
    RequestTooLarge,
)
from vitkit.serve.limits import PixelBudget, SpoolBudget, UploadLimits
from vitkit.serve.metrics import Metrics
from vitkit.serve.runner import ClassifierSource, ModelRunner
from vitkit.serve.settings import ServeSettings
from vitkit.serve.uploads import Upload, fetch_upload, read_body

log = logging.getLogger("vitkit.serve")
T = TypeVar("T")
ModelSources = ClassifierSource | Mapping[str | None, ClassifierSource]
"""One model (a Classifier or a function that loads one), or several by name (a None name: the
``model_name`` setting, else one made from the checkpoint)."""
Inputs = Callable[[], Awaitable[list[Upload]]]
"""Where a request's images come from: its body or its image_url (see Service.body / .url)."""


class Service:
    """The models' runners, the budgets they share, admission and readiness."""

    def __init__(
        self,
        sources: ModelSources | None,
        settings: ServeSettings,
        on_load_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.settings = settings
        self.on_load_error = on_load_error
        self.metrics = Metrics()
        self.pixels = PixelBudget(settings.pixel_budget)
        if sources is None:  # the models the settings name, each loaded with its LoadSettings
            sources = {
                name: partial(load_settings, load)
                for name, load in settings.model_sources().items()
            }
        named = sources if isinstance(sources, Mapping) else {None: sources}
        if not named:
            raise ServeSettingsError("no model to serve: give at least one")
        self.runners = [
            ModelRunner(name or settings.model_name, source, settings, self.pixels, self.metrics)
            for name, source in named.items()
        ]
        self.metrics.track_queue(self._queued)
        self.in_flight = 0
        self.spools = SpoolBudget(settings.spool_memory, settings.spool_per_upload)
        self.fetches = FetchLimiter(settings.fetches_per_host, settings.max_fetches)
        self.upload_limits = UploadLimits(
            max_bytes=settings.max_body_bytes,
            timeout=settings.upload_timeout,
            min_rate=settings.min_transfer_rate,
            grace=settings.upload_grace,
        )

    # ---- start-up and shutdown ------------------------------------------------------------
    def start(self) -> None:
        threading.Thread(target=self._load, name="vitkit-load", daemon=True).start()

    def _load(self) -> None:
        """Load the models one after the other (so each one's memory is its own), then hand
        back what loading freed (the checkpoint's tensors before they became the model's)."""
        for runner in self.runners:
            try:
                runner.load()
            except Exception as error:
                if self.on_load_error is not None:
                    self.on_load_error(error)
                return
            return_free_memory()
        names = [runner.name for runner in self.runners]
        if len(set(names)) < len(names):
            log.warning("two models have the same public name %s: name them (NAME=PATH)", names)

    def stop(self) -> None:
        for runner in self.runners:
            runner.stop()

    @property
    def ready(self) -> bool:
        return all(runner.ready for runner in self.runners)

    @property
    def load_error(self) -> str | None:
        return next((r.load_error for r in self.runners if r.load_error), None)

    @property
    def default(self) -> ModelRunner:
        """The model of the routes that name none (the seed route, /v1 without ?model=)."""
        return self.runners[0]

    def runner(self, name: str | None) -> ModelRunner:
        """The model called ``name`` (None: the default); 404 for a name not served."""
        if name is None:
            return self.default
        for runner in self.runners:
            if runner.name == name or runner.requested_name == name:
                return runner
        known = ", ".join(r.name or str(r.requested_name) for r in self.runners)
        raise ModelNotFound(f"no model named {name!r} here; this service has: {known}")

    def _queued(self) -> float:
        return float(sum(r.batcher.qsize() for r in self.runners if r.batcher is not None))

    # ---- inputs (before admission) ----------------------------------------------------------
    def body(self, request: Any, field_name: str | None = None) -> Inputs:
        return partial(
            read_body,
            request,
            self.upload_limits,
            self.spools,
            field_name=field_name,
            max_files=self.settings.max_files,
        )

    def url(self, url: str) -> Inputs:
        async def fetched() -> list[Upload]:
            policy = self.settings.fetch_policy
            return [await fetch_upload(url, policy, self.fetches, self.spools)]

        return fetched

    @asynccontextmanager
    async def received(self, inputs: Inputs) -> AsyncIterator[list[Upload]]:
        """The request's uploads, checked, closed (spools freed) when the request ends."""
        uploads = await inputs()
        try:
            for upload in uploads:
                self._check_size(upload)
            yield uploads
        finally:
            for upload in uploads:
                upload.close()

    def _check_size(self, upload: Upload) -> None:
        if not upload.size:
            raise BadInput(f"{upload.name}: empty (0 bytes): send the image bytes")
        if upload.size > self.settings.max_image_bytes:
            raise RequestTooLarge(
                f"{upload.name}: {upload.size:,} bytes is over the "
                f"{self.settings.max_image_bytes:,}-byte limit (server option --max-image-bytes)"
            )

    # ---- admission and deadlines ----------------------------------------------------------
    @asynccontextmanager
    async def admitted(self) -> AsyncIterator[float]:
        """The request's deadline, once it holds one of the ``max_queue`` slots (else 503)."""
        if self.in_flight >= self.settings.max_queue:
            raise Overloaded(
                f"{self.in_flight} requests already in flight (server option --max-queue): "
                "retry shortly"
            )
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            yield time.monotonic() + self.settings.request_timeout
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()

    async def within(self, deadline: float, work: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(work, timeout=max(deadline - time.monotonic(), 0.0))
        except TimeoutError:
            raise DeadlineExceeded(
                f"no answer within {self.settings.request_timeout:g} s "
                "(server option --request-timeout)"
            ) from None

    async def run(self, inputs: Inputs, work: Callable[[list[Upload], float], Awaitable[T]]) -> T:
        """``work(uploads, deadline)`` once the inputs have arrived and the request is admitted,
        within its deadline: the path every prediction route takes."""
        async with self.received(inputs) as uploads, self.admitted() as deadline:
            return await self.within(deadline, work(uploads, deadline))

    async def run_admitted(self, work: Callable[[float], Awaitable[T]]) -> T:
        """``work(deadline)`` for a request whose inputs are already in hand (a v2 tensor)."""
        async with self.admitted() as deadline:
            return await self.within(deadline, work(deadline))

    def require_ready(self) -> None:
        for runner in self.runners:
            runner.require_ready()


def return_free_memory() -> None:
    """Give the heap's free pages back to the OS (glibc ``malloc_trim``; elsewhere nothing).

    Loading a checkpoint reads its tensors before they are copied into the model; with the
    allocator thresholds a serving process runs with (``runtime.tune_cpu_allocator``), freed
    memory stays in the heap: about 80 MB of a ViT-B/16's load that the service would otherwise
    hold for its whole life. Changes no setting.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
