"""The state behind the routes, and the life of a prediction request.

1. readiness: 503 + Retry-After at once while the model loads (nothing is read);
2. the inputs arrive: the body streams into spools (``vitkit.serve.uploads``) under its byte
   cap, deadline and minimum rate, or the ``image_url`` is fetched on the event loop. Nothing
   is held for the model yet: a slow client costs a connection and a spool, not a queue slot;
3. admission: 503 + Retry-After if ``max_queue`` requests are already admitted; from here on,
   one deadline (``request_timeout``) covers the rest: 504 when it passes;
4. decoding and preprocessing run in the decode threads, each image within the shared pixel
   budget (``PixelBudget``), never on the event loop;
5. the pixels join the micro-batcher's queue; the model thread runs them with whatever else
   arrived meanwhile.

``POST /v1/explain`` follows the same path; its attention pass is one more batcher operation
(see ``vitkit.serve.explain`` for why), and the overlay is drawn in the decode pool.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import torch
from PIL import Image

from vitkit.errors import NoClassificationHeadError, UnsupportedOperationError
from vitkit.images.decode import load_image, open_checked
from vitkit.images.fetch import FetchLimiter
from vitkit.images.processor import ImageProcessor
from vitkit.inference.classifier import Classifier
from vitkit.inference.heads import trim_answer
from vitkit.models.protocol import check_pool
from vitkit.serve.batcher import MicroBatcher
from vitkit.serve.errors import BadInput, DeadlineExceeded, NotReady, Overloaded, RequestTooLarge
from vitkit.serve.explain import (
    EXPLAIN,
    Explanation,
    Method,
    display_copy,
    overlay_png,
    run_explain,
)
from vitkit.serve.limits import PixelBudget, SpoolBudget, UploadLimits
from vitkit.serve.metrics import Metrics
from vitkit.serve.settings import ServeSettings
from vitkit.serve.uploads import Upload, fetch_upload, read_body

log = logging.getLogger("vitkit.serve")
T = TypeVar("T")
ClassifierSource = Classifier | Callable[[], Classifier]
Inputs = Callable[[], Awaitable[list[Upload]]]
"""Where a request's images come from: its body or its image_url (see Service.body / .url)."""


class Service:
    """The classifier, its batcher, the decode pool, the budgets, readiness."""

    def __init__(
        self,
        source: ClassifierSource,
        settings: ServeSettings,
        on_load_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.source = source
        self.settings = settings
        self.on_load_error = on_load_error
        self.metrics = Metrics()
        self.classifier: Classifier | None = None
        self.model_name = settings.model_name or ""  # what clients see (never a path)
        self.upload_processor: ImageProcessor | None = None  # the classifier's, with our cap
        self.batcher: MicroBatcher | None = None
        self.load_error: str | None = None
        self.in_flight = 0
        self.decoding = 0  # admitted requests not yet handed to the batcher (it waits for them)
        self.decode_pool = ThreadPoolExecutor(settings.decode_workers, "vitkit-decode")
        self.pixels = PixelBudget(settings.pixel_budget)
        self.spools = SpoolBudget(settings.spool_memory, settings.spool_per_upload)
        self.fetches = FetchLimiter(settings.fetches_per_host, settings.max_fetches)
        self.upload_limits = UploadLimits(
            max_bytes=settings.max_body_bytes,
            timeout=settings.upload_timeout,
            min_rate=settings.min_upload_rate,
            grace=settings.upload_grace,
        )

    # ---- start-up and shutdown ------------------------------------------------------------
    def start(self) -> None:
        threading.Thread(target=self._load, name="vitkit-load", daemon=True).start()

    def _load(self) -> None:
        try:
            classifier = self.source if isinstance(self.source, Classifier) else self.source()
            if self.settings.warmup:
                _warm_up(classifier, self.settings.max_batch_size)
            batcher = MicroBatcher(
                partial(_run_batch, classifier),
                max_batch_size=self.settings.max_batch_size,
                max_delay_s=self.settings.max_batch_delay_ms / 1000,
                max_queue=self.settings.max_queue,
                on_batch=self.metrics.observe_batch,
                expecting=lambda: self.decoding,
            )
            self.metrics.track_queue(batcher.qsize)
            batcher.start()
            self.upload_processor = dataclasses.replace(
                classifier.processor, max_pixels=self.settings.max_pixels
            )
            self.model_name = self.settings.model_name or public_model_name(classifier)
            self.classifier, self.batcher = classifier, batcher
            log.info("model %s loaded and warmed up: ready", self.model_name)
        except Exception as error:
            self.load_error = f"{type(error).__name__}: {error}"
            log.error("loading the model failed: %s", self.load_error)
            if self.on_load_error is not None:
                self.on_load_error(error)

    def stop(self) -> None:
        if self.batcher is not None:
            self.batcher.stop()
        self.decode_pool.shutdown(wait=False, cancel_futures=True)

    @property
    def ready(self) -> bool:
        return self.batcher is not None

    def embed_pool(self, pool: str | None) -> str:
        """The pool asked for, else the model family's documented embedding."""
        classifier, _ = self.require_ready()
        return pool or classifier.default_pool

    def require_ready(self) -> tuple[Classifier, MicroBatcher]:
        if self.classifier is None or self.batcher is None:
            raise NotReady(
                "the model failed to load: see the server log"
                if self.load_error
                else "the model is still loading: retry shortly (GET /readyz says when)"
            )
        return self.classifier, self.batcher

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

    async def in_thread(self, function: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.decode_pool, function)

    async def prepare(self, uploads: list[Upload], deadline: float) -> torch.Tensor:
        classifier, _ = self.require_ready()
        assert self.upload_processor is not None  # set with the classifier
        decode = partial(
            _decode,
            self.upload_processor,
            classifier.processor_mode,
            uploads,
            self.pixels,
            deadline,
        )
        return await self.on_the_way(self.in_thread(decode))

    async def on_the_way(self, work: Awaitable[T]) -> T:
        """``work`` (a decode whose result goes to the batcher next), counted in ``decoding``
        so that the batcher waits for it; its submit follows without an await in between."""
        self.decoding += 1
        try:
            return await work
        finally:
            self.decoding -= 1

    # ---- the three operations ---------------------------------------------------------------
    async def classify(self, inputs: Inputs, top_k: int) -> list[list[dict[str, Any]]]:
        classifier, batcher = self.require_ready()
        if not classifier.config.num_labels:
            raise NoClassificationHeadError(
                f"{self.model_name} has no classification head: use POST /v1/embed"
            )
        async with self.received(inputs) as uploads, self.admitted() as deadline:

            async def work() -> list[Any]:
                pixels = await self.prepare(uploads, deadline)
                return await batcher.submit(("predict",), pixels, top_k=top_k, deadline=deadline)

            return await self.within(deadline, work())

    async def embed(self, inputs: Inputs, pool: str) -> list[list[float]]:
        """Embeddings pooled as ``pool`` (see ``embed_pool`` for the default)."""
        classifier, batcher = self.require_ready()
        try:  # before batching: a pool the model lacks fails this request only
            check_pool(classifier.model, pool)
        except UnsupportedOperationError as error:
            raise BadInput(f"{self.model_name}: {error}") from error
        async with self.received(inputs) as uploads, self.admitted() as deadline:

            async def work() -> list[Any]:
                pixels = await self.prepare(uploads, deadline)
                return await batcher.submit(("embed", pool), pixels, deadline=deadline)

            return await self.within(deadline, work())

    async def explain(
        self, inputs: Inputs, top_k: int, method: Method
    ) -> tuple[Explanation, bytes]:
        """(the image's explanation, its overlay PNG): decode, batcher, drawing, one deadline."""
        classifier, batcher = self.require_ready()
        async with self.received(inputs) as uploads, self.admitted() as deadline:
            if len(uploads) != 1:
                raise BadInput(
                    f"{len(uploads)} images sent: /v1/explain takes one image per request"
                )

            async def work() -> tuple[Explanation, bytes]:
                picture, pixels = await self.on_the_way(
                    self.in_thread(
                        partial(
                            _decode_for_display,
                            classifier,
                            uploads[0],
                            self.settings.max_pixels,
                            self.pixels,
                            deadline,
                        )
                    )
                )
                [explanation] = await batcher.submit(
                    EXPLAIN, pixels, top_k=top_k, deadline=deadline
                )
                # the batch's max k; labels that pass a threshold always stay
                explanation.predictions = trim_answer(explanation.predictions, top_k)
                png = await self.in_thread(partial(overlay_png, picture, explanation.maps[method]))
                return explanation, png

            return await self.within(deadline, work())


def public_model_name(classifier: Classifier) -> str:
    """What clients are told the model is: a hub id, or the config's name, never a local path.

    ``Classifier.name`` is whatever ``load`` was given, often a directory on the server
    (``/home/user/runs/demo/best``); only a hub-style id (``org/name``, no such local path)
    passes as it is; otherwise the architecture and head (``vit, 5 labels``). ``--model-name`` overrides all of this.
    """
    if _looks_like_hub_id(classifier.name):
        return classifier.name
    config = classifier.config
    described = config.to_hf_dict() if hasattr(config, "to_hf_dict") else {}
    kind = described.get("model_type") or type(config).__name__
    labels = getattr(config, "num_labels", 0)
    return f"{kind}, {labels} labels" if labels else f"{kind} (embeddings)"


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return (
        len(parts) == 2
        and all(part and not part.startswith((".", "~")) for part in parts)
        and "\\" not in name
        and not Path(name).exists()
    )


# ---- the decode threads -----------------------------------------------------------------------
def _decode(
    processor: ImageProcessor,
    mode: str | None,
    uploads: list[Upload],
    budget: PixelBudget,
    deadline: float,
) -> torch.Tensor:
    """Bytes -> the checkpoint's preprocessing, one image at a time within the pixel budget.

    The processor reads the bytes itself, so its fast decoding (RGBX JPEG, ``--jpeg-draft``)
    applies, with the service's pixel cap (``Service.upload_processor``).
    """
    prepared = []
    for upload in uploads:
        data = upload.read()
        with budget.hold(_pixels(data, upload.name, processor.max_pixels), deadline):
            prepared.append(processor([_named_stream(data, upload.name)], mode))
    return torch.cat(prepared) if len(prepared) > 1 else prepared[0]


def _decode_for_display(
    classifier: Classifier, upload: Upload, max_pixels: int, budget: PixelBudget, deadline: float
) -> tuple[Image.Image, torch.Tensor]:
    """(a display-sized copy of the image, its model input): the decode step of /v1/explain."""
    data = upload.read()
    with budget.hold(_pixels(data, upload.name, max_pixels), deadline):
        image = load_image(_named_stream(data, upload.name), max_pixels=max_pixels)
        return display_copy(image), classifier.prepare([image])


def _pixels(data: bytes, name: str, max_pixels: int | None) -> int:
    """The image's pixel count from its header (nothing decoded); refuses what the cap refuses."""
    with open_checked(data, name, max_pixels=max_pixels) as header:
        width, height = header.size
    return int(width * height)


def _named_stream(data: bytes, name: str) -> io.BytesIO:
    stream = io.BytesIO(data)
    stream.name = name  # errors name the upload, not "<BytesIO>"
    return stream


# ---- the model thread ---------------------------------------------------------------------------
def _run_batch(
    classifier: Classifier, operation: Hashable, pixels: torch.Tensor, top_k: int
) -> list[Any]:
    """What the model worker runs for one batch (see MicroBatcher)."""
    if operation == ("predict",):
        return classifier.predict_tensor(pixels, top_k)
    if operation == EXPLAIN:
        return run_explain(classifier, pixels, top_k)
    pool: Any = operation[1]  # type: ignore[index]  # ("embed", pool)
    return classifier.embed_tensor(pixels, pool).cpu().tolist()


def _warm_up(classifier: Classifier, max_batch_size: int) -> None:
    """One pass at batch 1 and at the largest batch, so the first real request is not the slow one."""
    pixels = classifier.prepare([Image.new("RGB", (64, 64), (128, 128, 128))])
    for size in sorted({1, max_batch_size}):
        batch = pixels.expand(size, *pixels.shape[1:]).contiguous()
        if classifier.config.num_labels:
            classifier.predict_tensor(batch, 1)
        else:
            classifier.embed_tensor(batch)
