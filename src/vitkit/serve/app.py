"""The FastAPI app: ``create_app(classifier_or_loader, ServeSettings(...))``.

How a request travels is told in ``vitkit.serve.service``; the routes are in
``vitkit.serve.routes``, their OpenAPI shapes in ``vitkit.serve.schemas``, the limits on what a
request may cost in ``vitkit.serve.limits`` and ``vitkit.serve.settings``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from vitkit.serve.errors import install_handlers
from vitkit.serve.limits import BodyLimitMiddleware
from vitkit.serve.metrics import MetricsMiddleware
from vitkit.serve.routes import add_page_and_docs, add_prediction_routes, add_probe_routes
from vitkit.serve.service import ClassifierSource, Service
from vitkit.serve.settings import ServeSettings

__all__ = ["ServeSettings", "Service", "create_app"]


def create_app(
    source: ClassifierSource,
    settings: ServeSettings | None = None,
    *,
    on_load_error: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The vitkit HTTP service for ``source`` (a Classifier, or a function that loads one).

    A function is called in a background thread at start-up, so /healthz answers while a large
    checkpoint loads; /readyz turns 200 once it is loaded and warmed up. Settings that cannot
    work raise ``ServeSettingsError`` here, before anything starts.
    """
    settings = settings or ServeSettings()
    settings.check()
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
        docs_url=None,  # served from local assets (routes.add_page_and_docs), not a CDN
        redoc_url=None,
    )
    app.state.service = service
    install_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)  # outermost: sees every status
    add_page_and_docs(app)
    add_probe_routes(app, service)
    add_prediction_routes(app, service)
    return app


def _version() -> str:
    from vitkit import __version__

    return __version__
