"""The FastAPI app: ``create_app(models, ServeSettings(...))``.

How a request travels is told in ``vitkit.serve.service``; the routes are in
``vitkit.serve.routes`` (the seed route and /v1) and ``vitkit.serve.routes_v2`` (the Open
Inference Protocol), their OpenAPI shapes in ``vitkit.serve.schemas``, keys and rate limits in
``vitkit.serve.access``, the limits on what a request may cost in ``vitkit.serve.limits`` and
``vitkit.serve.settings``.

Middleware, outermost first: metrics (every status), request id + access gate + access log,
the body-size cap, then the routes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from vitkit.serve import schemas
from vitkit.serve.access import AccessGate, KeyRing, parse_rate
from vitkit.serve.errors import install_handlers
from vitkit.serve.limits import BodyLimitMiddleware
from vitkit.serve.metrics import MetricsMiddleware
from vitkit.serve.requestlog import RequestLogMiddleware
from vitkit.serve.routes import add_page_and_docs, add_prediction_routes, add_probe_routes
from vitkit.serve.routes_v2 import VERSION, add_v2_routes
from vitkit.serve.segment import add_segment_route
from vitkit.serve.service import ModelSources, Service
from vitkit.serve.settings import ServeSettings

__all__ = ["EXTRA_ROUTES", "ServeSettings", "Service", "create_app"]

RouteAdder = Callable[[FastAPI, Service], None]
EXTRA_ROUTES: list[RouteAdder] = [add_segment_route]  # model kinds' own routes
"""Routes a model kind adds (``vitkit.serve`` docstring): each is called with the app and the
service after the built-in routes; it finds its models in ``service.runners``."""


def create_app(
    models: ModelSources | None = None,
    settings: ServeSettings | None = None,
    *,
    on_load_error: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The vitkit HTTP service for ``models``: a Classifier, a function that loads one, or a
    mapping of names to either (the first is the default model); None: the models
    ``settings.models`` names, each loaded with ``settings.load``.

    Functions are called in a background thread at start-up, one model after the other, so
    /healthz answers while large checkpoints load; /readyz turns 200 once every model is loaded
    and warmed up. Settings that cannot work raise ``ServeSettingsError`` here, before anything
    starts (an API key file included).
    """
    settings = settings or ServeSettings()
    settings.check()
    gate = access_gate(settings)
    service = Service(models, settings, on_load_error)

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
    app.add_middleware(RequestLogMiddleware, gate=gate, metrics=service.metrics)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)  # outermost: sees every status
    add_page_and_docs(app)
    add_probe_routes(app, service)
    add_prediction_routes(app, service)
    add_v2_routes(app, service, _version())
    for add_routes in EXTRA_ROUTES:
        add_routes(app, service)
    document_access(app, gate, service)
    return app


def access_gate(settings: ServeSettings) -> AccessGate:
    keys = KeyRing.from_file(settings.api_keys) if settings.api_keys else None
    rate = parse_rate(settings.rate_limit, "--rate-limit") if settings.rate_limit else None
    return AccessGate(
        keys,
        rate,
        settings.burst,
        parse_rate(settings.key_failures, "--key-failures"),
        open_metrics=settings.open_metrics,
        open_docs=settings.open_docs,
    )


def document_access(app: FastAPI, gate: AccessGate, service: Service) -> None:
    """The OpenAPI schema says what the service does beyond its routes' signatures: the v2
    request's component schemas; the served models' names (an enum, once they are loaded); and
    on every keyed or limited operation its security schemes and its 401 / 429 answers."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        app.openapi_schema = None  # FastAPI caches it; ours is kept only once the names are known
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {}).update(schemas.v2_request_components())
        if gate.keys is not None:
            components["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
        guarded = gate.keys is not None or gate.limits is not None
        names = [runner.name for runner in service.runners] if service.ready else None
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                _enumerate_models(operation, names)
                if guarded and not gate.is_open(path):
                    _guard(operation, gate, v2=path == "/v2" or path.startswith("/v2/"))
        if names is not None:
            app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _enumerate_models(operation: dict[str, Any], names: list[str] | None) -> None:
    """The model name parameters take the served names only; the v2 version only "1"."""
    for parameter in operation.get("parameters", []):
        schema = parameter.get("schema", {})
        if parameter["name"] in ("model", "model_name") and names is not None:
            if "anyOf" in schema:  # an optional query parameter: str | None
                schema.pop("anyOf")
                schema["type"] = "string"
            schema["enum"] = names
        elif parameter["name"] == "model_version":
            schema["enum"] = [VERSION]


def _guard(operation: dict[str, Any], gate: AccessGate, *, v2: bool) -> None:
    responses = operation.setdefault("responses", {})
    if gate.keys is not None:
        operation["security"] = [{"bearer": []}, {"apiKey": []}]
        responses["401"] = _response(401, v2)
    responses["429"] = _response(429, v2)


def _response(status: int, v2: bool) -> dict[str, Any]:
    entry = dict(schemas.ACCESS_RESPONSES[status])
    entry.pop("model")
    body = "V2Error" if v2 else "ErrorBody"
    entry["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}}
    return entry


def _version() -> str:
    from vitkit import __version__

    return __version__
