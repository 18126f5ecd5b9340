"""The FastAPI app: routes, admission control, decoding off the loop, and the model behind a batcher.

Life of a prediction request:

1. admission: refused at once with 503 + Retry-After if the model is not ready or
   ``max_queue`` requests are already in flight;
2. the body (multipart files or raw bytes; capped while streaming) or the ``image_url`` (fetched
   by ``vitkit.images.fetch`` in a thread pool) becomes bytes;
3. decoding and preprocessing (``vitkit.images.decode.load_image`` with the pixel cap, then the checkpoint's
   processor) run in a thread pool, never on the event loop;
4. the pixels join the micro-batcher's queue; the model worker thread runs them with whatever
   else arrived meanwhile;
5. the whole request runs under one deadline (``request_timeout``): 504 when it passes.

``POST /v1/explain`` follows the same path; its attention pass is one more batcher operation
(see ``vitkit.serve.explain`` for why), and the overlay is drawn in the decode pool.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.datastructures import UploadFile

from vitkit.errors import NoClassificationHeadError, UnsupportedOperationError
from vitkit.images.decode import DEFAULT_MAX_PIXELS, load_image
from vitkit.images.fetch import FetchPolicy, fetch_url
from vitkit.images.processor import ImageProcessor
from vitkit.inference.classifier import Classifier
from vitkit.models.protocol import check_pool
from vitkit.serve.batcher import MicroBatcher
from vitkit.serve.errors import (
    BadInput,
    DeadlineExceeded,
    MissingField,
    NotReady,
    Overloaded,
    RequestTooLarge,
    error_response,
    install_handlers,
)
from vitkit.serve.explain import (
    EXPLAIN,
    Explanation,
    Method,
    display_copy,
    overlay_png,
    run_explain,
    wants_png,
)
from vitkit.serve.limits import BodyLimitMiddleware
from vitkit.serve.metrics import Metrics, MetricsMiddleware

log = logging.getLogger("vitkit.serve")
STATIC = Path(__file__).resolve().parent / "static"
T = TypeVar("T")
ClassifierSource = Classifier | Callable[[], Classifier]


@dataclass
class ServeSettings:
    """Everything ``vitkit serve`` lets an operator tune (see its --help)."""

    max_batch_size: int = 8
    max_batch_delay_ms: float = 5.0
    max_queue: int = 64
    request_timeout: float = 30.0
    max_image_bytes: int = 10 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_files: int = 16
    decode_workers: int = 4
    fetch_workers: int = 16
    fetch_policy: FetchPolicy = field(default_factory=FetchPolicy)
    warmup: bool = True

    @property
    def max_body_bytes(self) -> int:
        return self.max_image_bytes * self.max_files + 64 * 1024  # + multipart framing


@dataclass
class Upload:
    name: str  # how errors name it: the uploaded file name, "body" or the URL
    data: bytes


class Service:
    """The state behind the routes: the classifier, its batcher, the thread pools, readiness."""

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
        self.upload_processor: ImageProcessor | None = None  # the classifier's, with our pixel cap
        self.batcher: MicroBatcher | None = None
        self.load_error: str | None = None
        self.in_flight = 0
        self.decode_pool = ThreadPoolExecutor(settings.decode_workers, "vitkit-decode")
        self.fetch_pool = ThreadPoolExecutor(settings.fetch_workers, "vitkit-fetch")

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
            )
            self.metrics.track_queue(batcher.qsize)
            batcher.start()
            self.upload_processor = dataclasses.replace(
                classifier.processor, max_pixels=self.settings.max_pixels
            )
            self.classifier, self.batcher = classifier, batcher
            log.info("model %s loaded and warmed up: ready", classifier.name)
        except Exception as error:
            self.load_error = f"{type(error).__name__}: {error}"
            log.error("loading the model failed: %s", self.load_error)
            if self.on_load_error is not None:
                self.on_load_error(error)

    def stop(self) -> None:
        if self.batcher is not None:
            self.batcher.stop()
        self.decode_pool.shutdown(wait=False, cancel_futures=True)
        self.fetch_pool.shutdown(wait=False, cancel_futures=True)

    @property
    def ready(self) -> bool:
        return self.batcher is not None

    # ---- admission and deadlines ----------------------------------------------------------
    @asynccontextmanager
    async def admitted(self) -> AsyncIterator[tuple[Classifier, MicroBatcher, float]]:
        """(classifier, batcher, deadline) for one request, or NotReady / Overloaded."""
        if self.classifier is None or self.batcher is None:
            raise NotReady(
                f"the model failed to load: {self.load_error}"
                if self.load_error
                else "the model is still loading: retry shortly (GET /readyz says when)"
            )
        if self.in_flight >= self.settings.max_queue:
            raise Overloaded(
                f"{self.in_flight} requests already in flight (server option --max-queue): "
                "retry shortly"
            )
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            yield self.classifier, self.batcher, time.monotonic() + self.settings.request_timeout
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()

    async def within(self, deadline: float, work: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(work, timeout=max(deadline - time.monotonic(), 0.0))
        except asyncio.TimeoutError:
            raise DeadlineExceeded(
                f"no answer within {self.settings.request_timeout:g} s "
                "(server option --request-timeout)"
            ) from None

    async def in_thread(self, pool: ThreadPoolExecutor, function: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, function)

    # ---- inputs -------------------------------------------------------------------------------
    async def read_uploads(self, request: Request, field_name: str | None = None) -> list[Upload]:
        """Images from a multipart body (all file fields, or just ``field_name``) or a raw body."""
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            form = await request.form(max_files=self.settings.max_files, max_fields=32)
            uploads = [
                Upload((value.filename or key)[:200], await value.read())
                for key, value in form.multi_items()
                if isinstance(value, UploadFile) and (field_name is None or key == field_name)
            ]
            await form.close()
            if not uploads:
                wanted = f"file field named {field_name!r}" if field_name else "file field"
                raise MissingField(f"the multipart body has no {wanted}: send the image in one")
        else:
            uploads = [Upload("body", await request.body())]
        for upload in uploads:
            self.check_size(upload)
        return uploads

    def check_size(self, upload: Upload) -> None:
        if not upload.data:
            raise BadInput(f"{upload.name}: empty (0 bytes): send the image bytes")
        if len(upload.data) > self.settings.max_image_bytes:
            raise RequestTooLarge(
                f"{upload.name}: {len(upload.data):,} bytes is over the "
                f"{self.settings.max_image_bytes:,}-byte limit (server option --max-image-bytes)"
            )

    async def fetch(self, url: str) -> Upload:
        data = await self.in_thread(
            self.fetch_pool, partial(fetch_url, url, policy=self.settings.fetch_policy)
        )
        upload = Upload(url[:200], data)
        self.check_size(upload)
        return upload

    async def prepare(self, classifier: Classifier, uploads: list[Upload]) -> torch.Tensor:
        assert self.upload_processor is not None  # set with the classifier
        decode = partial(_decode, self.upload_processor, classifier.processor_mode, uploads)
        return await self.in_thread(self.decode_pool, decode)

    # ---- the two operations ---------------------------------------------------------------
    async def classify(
        self, get_uploads: Callable[[], Awaitable[list[Upload]]], top_k: int
    ) -> list[list[dict[str, Any]]]:
        async with self.admitted() as (classifier, batcher, deadline):
            if not classifier.config.num_labels:
                raise NoClassificationHeadError(
                    f"{classifier.name} has no classification head: use POST /v1/embed"
                )

            async def work() -> list[Any]:
                pixels = await self.prepare(classifier, await get_uploads())
                return await batcher.submit(("predict",), pixels, top_k=top_k, deadline=deadline)

            return await self.within(deadline, work())

    async def embed(
        self, get_uploads: Callable[[], Awaitable[list[Upload]]], pool: str | None
    ) -> list[list[float]]:
        async with self.admitted() as (classifier, batcher, deadline):
            try:  # before batching: a pool the model lacks fails this request only
                check_pool(classifier.model, pool or classifier.default_pool)
            except UnsupportedOperationError as error:
                raise BadInput(f"{classifier.name}: {error}") from error

            async def work() -> list[Any]:
                pixels = await self.prepare(classifier, await get_uploads())
                return await batcher.submit(("embed", pool), pixels, deadline=deadline)

            return await self.within(deadline, work())

    async def explain(
        self, get_uploads: Callable[[], Awaitable[list[Upload]]], top_k: int, method: Method
    ) -> tuple[Explanation, bytes]:
        """(the image's explanation, its overlay PNG): decode, batcher, drawing, one deadline."""
        async with self.admitted() as (classifier, batcher, deadline):

            async def work() -> tuple[Explanation, bytes]:
                uploads = await get_uploads()
                if len(uploads) != 1:
                    raise BadInput(
                        f"{len(uploads)} images sent: /v1/explain takes one image per request"
                    )
                picture, pixels = await self.in_thread(
                    self.decode_pool,
                    partial(_decode_for_display, classifier, uploads[0], self.settings.max_pixels),
                )
                [explanation] = await batcher.submit(
                    EXPLAIN, pixels, top_k=top_k, deadline=deadline
                )
                explanation.predictions = explanation.predictions[:top_k]  # the batch's max k
                png = await self.in_thread(
                    self.decode_pool, partial(overlay_png, picture, explanation.maps[method])
                )
                return explanation, png

            return await self.within(deadline, work())


def _decode_for_display(
    classifier: Classifier, upload: Upload, max_pixels: int
) -> tuple[Image.Image, torch.Tensor]:
    """(a display-sized copy of the image, its model input): the decode step of /v1/explain."""
    image = _load_upload(upload, max_pixels)
    return display_copy(image), classifier.prepare([image])


def _load_upload(upload: Upload, max_pixels: int) -> Image.Image:
    """One upload's bytes -> a checked, decoded RGB image (errors name the upload)."""
    return load_image(_upload_stream(upload), max_pixels=max_pixels)


def _decode(processor: ImageProcessor, mode: str | None, uploads: list[Upload]) -> torch.Tensor:
    """Bytes -> the checkpoint's preprocessing (a worker thread), the same checks as load_image.

    The processor reads the bytes itself, so its fast decoding (RGBX JPEG, ``--jpeg-draft``)
    applies, with the service's pixel cap (``Service.upload_processor``).
    """
    return processor([_upload_stream(upload) for upload in uploads], mode)


def _upload_stream(upload: Upload) -> io.BytesIO:
    stream = io.BytesIO(upload.data)
    stream.name = upload.name  # errors name the upload, not "<BytesIO>"
    return stream


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


# ---- the app --------------------------------------------------------------------------------
_IMAGE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"image": {"type": "string", "format": "binary"}},
                "required": ["image"],
            }
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
}
_FILES_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                },
            }
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}
TopK = Query(5, ge=1, le=1000, description="How many labels to return per image.")


def create_app(
    source: ClassifierSource,
    settings: ServeSettings | None = None,
    *,
    on_load_error: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The vitkit HTTP service for ``source`` (a Classifier, or a function that loads one).

    A function is called in a background thread at start-up, so /healthz answers while a large
    checkpoint loads; /readyz turns 200 once it is loaded and warmed up.
    """
    settings = settings or ServeSettings()
    service = Service(source, settings, on_load_error)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        yield
        service.stop()  # uvicorn has already let in-flight requests finish

    app = FastAPI(
        title="vitkit",
        summary="Vision Transformer image classification and embeddings",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.service = service
    install_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)  # outermost: sees every status
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _add_probe_routes(app, service)
    _add_prediction_routes(app, service)
    return app


def _version() -> str:
    from vitkit import __version__

    return __version__


def _add_probe_routes(app: FastAPI, service: Service) -> None:
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the model is loaded and warmed up")
    async def readyz() -> Response:
        if service.ready and service.classifier is not None:
            return JSONResponse({"status": "ready", "model": service.classifier.name})
        detail = service.load_error or "the model is still loading"
        return error_response(503, "not_ready", detail, retry_after=5)

    @app.get("/v1/model", summary="The served model: name, config, labels")
    async def model_info() -> dict[str, Any]:
        classifier = service.classifier
        if classifier is None:
            raise NotReady(service.load_error or "the model is still loading")
        return {
            "name": classifier.name,
            "labels": list(classifier.labels),
            "config": classifier.config.to_hf_dict(),
            "device": str(getattr(classifier, "device", "cpu")),
            "max_batch_size": service.settings.max_batch_size,
        }

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)


def _add_prediction_routes(app: FastAPI, service: Service) -> None:
    def best(predictions: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "predicted_class": predictions[0]["label"],
            "score": predictions[0]["score"],
            "predictions": predictions,
        }

    @app.get("/predict_image_class", summary="Classify the image at a URL")
    async def predict_url(
        image_url: str = Query(..., description="http(s) URL of the image", max_length=8192),
        top_k: int = TopK,
    ) -> dict[str, Any]:
        async def uploads() -> list[Upload]:
            return [await service.fetch(image_url)]

        return best((await service.classify(uploads, top_k))[0])

    @app.post(
        "/predict_image_class",
        summary="Classify an uploaded image (multipart field 'image')",
        openapi_extra={"requestBody": _IMAGE_BODY},
    )
    async def predict_upload(request: Request, top_k: int = TopK) -> dict[str, Any]:
        return best(
            (await service.classify(partial(service.read_uploads, request, "image"), top_k))[0]
        )

    @app.post(
        "/v1/predict",
        summary="Classify one or more images (multipart files or a raw image body)",
        openapi_extra={"requestBody": _FILES_BODY},
    )
    async def predict(request: Request, top_k: int = TopK) -> list[list[dict[str, Any]]]:
        return await service.classify(partial(service.read_uploads, request), top_k)

    @app.post(
        "/v1/explain",
        summary="Where the model looks: an attention map and a PNG overlay for one image",
        description=(
            "One image (multipart field `image`, or a raw image body). `method=rollout` "
            "(attention rollout over all layers) or `method=cls` (the last block's [CLS] "
            "attention); each map sums to one over the patch grid. Answers a PNG overlay "
            "of the image's aspect for `Accept: image/png` or `format=png`, otherwise JSON: "
            "`predictions`, `method`, `grid` [rows, cols], `attention_map` (rows x cols floats) "
            "and `overlay_png_base64`."
        ),
        openapi_extra={"requestBody": _IMAGE_BODY},
        responses={200: {"content": {"application/json": {}, "image/png": {}}}},
    )
    async def explain(
        request: Request,
        top_k: int = TopK,
        method: Literal["rollout", "cls"] = Query("rollout", description="which map"),
        format: Literal["json", "png"] | None = Query(
            None, description="png: the overlay only (default: by the Accept header, else json)"
        ),
    ) -> Response:
        explanation, png = await service.explain(
            partial(service.read_uploads, request), top_k, method
        )
        if format == "png" or (format is None and wants_png(request.headers.get("accept", ""))):
            return Response(png, media_type="image/png")
        attention_map = explanation.maps[method]
        return JSONResponse(
            {
                "model": service.classifier.name if service.classifier else "",
                "method": method,
                "predictions": explanation.predictions,
                "grid": list(attention_map.shape),
                "attention_map": attention_map.round(6).tolist(),
                "overlay_png_base64": base64.b64encode(png).decode("ascii"),
            }
        )

    @app.post(
        "/v1/embed",
        summary="Pooled embeddings of one or more images",
        openapi_extra={"requestBody": _FILES_BODY},
    )
    async def embed(
        request: Request,
        pool: Literal["cls", "mean", "cls+mean", "pooler"] | None = Query(
            None, description="default: the model family's documented embedding"
        ),
    ) -> dict[str, Any]:
        vectors = await service.embed(partial(service.read_uploads, request), pool)
        classifier = service.classifier
        name = classifier.name if classifier else ""
        used = pool or (classifier.default_pool if classifier else None)
        return {"model": name, "pool": used, "dim": len(vectors[0]), "embeddings": vectors}
