"""One served model: its classifier, its decode threads and its micro-batcher.

Every route family (the seed GET route, /v1, the Open Inference Protocol /v2) is a thin adapter
that turns a request into one of a runner's operations and its result into that family's
answer; the runner does the work. An operation is decoding in the runner's own decode pool
(within the service-wide pixel budget) followed by a batcher job; the batcher's model thread
runs jobs with ``BATCH_OPERATIONS[operation[0]]``, so a model kind can add an operation (and its
routes, see ``vitkit.serve``) without touching this module.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import torch
from PIL import Image

from vitkit.checkpoints.hub import source_kind
from vitkit.errors import NoClassificationHeadError, UnsupportedOperationError
from vitkit.images.processor import ImageProcessor
from vitkit.inference.classifier import Classifier
from vitkit.inference.heads import trim_answer
from vitkit.models.protocol import check_pool
from vitkit.serve.batcher import MicroBatcher
from vitkit.serve.decoding import Decoded, decode_for_display, decode_uploads
from vitkit.serve.errors import BadInput, NotReady
from vitkit.serve.explain import EXPLAIN, Explanation, Method, overlay_png, run_explain
from vitkit.serve.limits import PixelBudget
from vitkit.serve.metrics import Metrics
from vitkit.serve.settings import ServeSettings
from vitkit.serve.uploads import Upload

log = logging.getLogger("vitkit.serve")
T = TypeVar("T")
ClassifierSource = Classifier | Callable[[], Classifier]
BatchOperation = Callable[[Classifier, Hashable, torch.Tensor, int], list[Any]]


def _predict(classifier: Classifier, operation: Hashable, pixels: torch.Tensor, top_k: int) -> Any:
    return classifier.predict_tensor(pixels, top_k)


def _embed(classifier: Classifier, operation: Hashable, pixels: torch.Tensor, top_k: int) -> Any:
    pool: Any = operation[1]  # type: ignore[index]  # ("embed", pool)
    return classifier.embed_tensor(pixels, pool).cpu().tolist()


def _explain(classifier: Classifier, operation: Hashable, pixels: torch.Tensor, top_k: int) -> Any:
    return run_explain(classifier, pixels, top_k)


# operation[0] -> what the model thread runs for a batch of that operation (one result per image)
BATCH_OPERATIONS: dict[str, BatchOperation] = {
    "predict": _predict,
    "embed": _embed,
    EXPLAIN[0]: _explain,
}


@dataclasses.dataclass
class ModelMemory:
    """What one model costs, for /v1/models: measured at load, and its share of the bound."""

    weights_bytes: int = 0  # parameters and buffers
    rss_added_bytes: int = 0  # resident memory the process grew by while it loaded and warmed up
    decode_buffers_bytes: int = 0  # encoded bytes its decode threads may hold at once


class ModelRunner:
    """One model of the service, by name: loading, readiness and its operations."""

    def __init__(
        self,
        name: str | None,
        source: ClassifierSource,
        settings: ServeSettings,
        pixels: PixelBudget,
        metrics: Metrics,
    ) -> None:
        self.requested_name = name
        self.name = name or ""  # what clients see (never a path); set at load when not given
        self.source = source
        self.settings = settings
        self.pixels = pixels  # the service's: decode memory is bounded across all models
        self.metrics = metrics
        self.classifier: Classifier | None = None
        self.upload_processor: ImageProcessor | None = None  # the classifier's, with our cap
        self.batcher: MicroBatcher | None = None
        self.load_error: str | None = None
        self.memory = ModelMemory(
            decode_buffers_bytes=settings.decode_workers * settings.max_body_bytes
        )
        self.decoding = 0  # requests decoding for this model (the batcher waits for them)
        self.decode_pool = ThreadPoolExecutor(settings.decode_workers, "vitkit-decode")

    # ---- loading --------------------------------------------------------------------------
    def load(self) -> None:
        """Load, warm up and start the batcher (in the service's loading thread)."""
        before = _rss_bytes()
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
            batcher.start()
            self.upload_processor = dataclasses.replace(
                classifier.processor, max_pixels=self.settings.max_pixels
            )
            self.name = self.requested_name or public_model_name(classifier)
            self.memory.weights_bytes = _weights_bytes(classifier)
            self.memory.rss_added_bytes = max(_rss_bytes() - before, 0)
            self.classifier, self.batcher = classifier, batcher
            log.info("model %s loaded and warmed up: ready", self.name)
        except Exception as error:
            self.load_error = f"{type(error).__name__}: {error}"
            log.error("loading the model %s failed: %s", self.requested_name or "", self.load_error)
            raise

    def stop(self) -> None:
        if self.batcher is not None:
            self.batcher.stop()
        self.decode_pool.shutdown(wait=False, cancel_futures=True)

    @property
    def ready(self) -> bool:
        return self.batcher is not None

    def require_ready(self) -> tuple[Classifier, MicroBatcher]:
        if self.classifier is None or self.batcher is None:
            raise NotReady(
                f"the model {self.name or self.requested_name} failed to load: see the server log"
                if self.load_error
                else "the model is still loading: retry shortly (GET /readyz says when)"
            )
        return self.classifier, self.batcher

    def embed_pool(self, pool: str | None) -> str:
        """The pool asked for, else the model family's documented embedding."""
        classifier, _ = self.require_ready()
        return pool or classifier.default_pool

    # ---- the decode threads -------------------------------------------------------------
    async def in_thread(self, function: Callable[[], T]) -> T:
        """``function`` in this model's decode pool, in the request's context (its log lines
        carry the request's id)."""
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.decode_pool, context.run, function)

    async def on_the_way(self, work: Awaitable[T]) -> T:
        """``work`` (a decode whose result goes to the batcher next), counted in ``decoding``
        so that the batcher waits for it; its submit follows without an await in between."""
        self.decoding += 1
        try:
            return await work
        finally:
            self.decoding -= 1

    async def decode(self, uploads: list[Upload], deadline: float) -> Decoded:
        classifier, _ = self.require_ready()
        assert self.upload_processor is not None  # set with the classifier
        work = partial(
            decode_uploads,
            self.upload_processor,
            classifier.processor_mode,
            uploads,
            self.pixels,
            deadline,
        )
        return await self.on_the_way(self.in_thread(work))

    # ---- the operations (within the caller's deadline) -----------------------------------
    def require_head(self) -> Classifier:
        classifier, _ = self.require_ready()
        if not classifier.config.num_labels:
            raise NoClassificationHeadError(
                f"{self.name} has no classification head: use its embeddings"
            )
        return classifier

    async def classify(
        self, uploads: list[Upload], deadline: float, top_k: int
    ) -> tuple[list[list[dict[str, Any]]], list[float]]:
        """(top-k per image, decoded scale per image)."""
        self.require_head()
        decoded = await self.decode(uploads, deadline)
        answers = await self.classify_pixels(decoded.pixels, deadline, top_k)
        return answers, decoded.scales

    async def classify_pixels(
        self, pixels: torch.Tensor, deadline: float, top_k: int
    ) -> list[list[dict[str, Any]]]:
        classifier, batcher = self.require_ready()
        if getattr(classifier.model.capabilities, "dense", False):
            raise BadInput(f"{self.name} is a segmentation model: use /v1/segment")
        return await batcher.submit(("predict",), pixels, top_k=top_k, deadline=deadline)

    def check_pool(self, pool: str) -> None:
        """Before batching: a pool the model lacks fails this request only."""
        classifier, _ = self.require_ready()
        try:
            check_pool(classifier.model, pool)
        except UnsupportedOperationError as error:
            raise BadInput(f"{self.name}: {error}") from error

    async def embed(
        self, uploads: list[Upload], deadline: float, pool: str
    ) -> tuple[list[list[float]], list[float]]:
        """(one embedding per image, decoded scale per image)."""
        self.check_pool(pool)
        decoded = await self.decode(uploads, deadline)
        return await self.embed_pixels(decoded.pixels, deadline, pool), decoded.scales

    async def embed_pixels(
        self, pixels: torch.Tensor, deadline: float, pool: str
    ) -> list[list[float]]:
        _, batcher = self.require_ready()
        return await batcher.submit(("embed", pool), pixels, deadline=deadline)

    async def explain(
        self, upload: Upload, deadline: float, top_k: int, method: Method
    ) -> tuple[Explanation, bytes, float]:
        """(the image's explanation, its overlay PNG, its decoded scale)."""
        classifier, batcher = self.require_ready()
        work = partial(
            decode_for_display,
            classifier.prepare,
            upload,
            self.settings.max_pixels,
            self.pixels,
            deadline,
        )
        picture, pixels, scale = await self.on_the_way(self.in_thread(work))
        [explanation] = await batcher.submit(EXPLAIN, pixels, top_k=top_k, deadline=deadline)
        # the batch's max k; labels that pass a threshold always stay
        explanation.predictions = trim_answer(explanation.predictions, top_k)
        png = await self.in_thread(partial(overlay_png, picture, explanation.maps[method]))
        return explanation, png, scale

    # ---- what clients are told --------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """The model's card for /v1/model and /v1/models."""
        classifier, _ = self.require_ready()
        settings = self.settings
        return {
            "name": self.name,
            "labels": list(classifier.labels),
            "head": classifier.head.describe() if classifier.head is not None else None,
            "tta": classifier.tta,
            "config": classifier.config.to_hf_dict(),
            "device": str(getattr(classifier, "device", "cpu")),
            "max_batch_size": settings.max_batch_size,
            "max_image_bytes": settings.max_image_bytes,
            "max_pixels": settings.max_pixels,
            "max_files": settings.max_files,
            "memory": dataclasses.asdict(self.memory),
        }


def public_model_name(classifier: Classifier) -> str:
    """What clients are told the model is: a hub id, or the config's name, never a local path.

    ``Classifier.name`` is whatever ``load`` was given, often a directory on the server
    (``/home/user/runs/demo/best``); only a hub-style id (``org/name``, no such local path)
    passes as it is; otherwise the architecture and head (``vit, 5 labels``). A name given to
    the service (``--model NAME=PATH``, ``--model-name``) overrides all of this.
    """
    if source_kind(classifier.name) == "hub":
        return classifier.name
    config = classifier.config
    described = config.to_hf_dict() if hasattr(config, "to_hf_dict") else {}
    kind = described.get("model_type") or type(config).__name__
    labels = getattr(config, "num_labels", 0)
    return f"{kind}, {labels} labels" if labels else f"{kind} (embeddings)"


# ---- the model thread ---------------------------------------------------------------------------
def _run_batch(
    classifier: Classifier, operation: Hashable, pixels: torch.Tensor, top_k: int
) -> list[Any]:
    """What the model worker runs for one batch (see MicroBatcher)."""
    kind = operation[0]  # type: ignore[index]
    return BATCH_OPERATIONS[kind](classifier, operation, pixels, top_k)


def _warm_up(classifier: Classifier, max_batch_size: int) -> None:
    """One pass at batch 1 and at the largest batch, so the first real request is not the slow one."""
    pixels = classifier.prepare([Image.new("RGB", (64, 64), (128, 128, 128))])
    dense = getattr(classifier.model.capabilities, "dense", False)
    for size in sorted({1, max_batch_size}):
        batch = pixels.expand(size, *pixels.shape[1:]).contiguous()
        if dense:  # a segmentation model (vitkit.serve.segment)
            BATCH_OPERATIONS["segment"](classifier, ("segment",), batch, 1)
        elif classifier.config.num_labels:
            classifier.predict_tensor(batch, 1)
        else:
            classifier.embed_tensor(batch)


def _weights_bytes(classifier: Classifier) -> int:
    model = classifier.model
    tensors = [*model.parameters(), *model.buffers()]
    return int(sum(t.numel() * t.element_size() for t in tensors))


def _rss_bytes() -> int:
    """This process's resident memory (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
