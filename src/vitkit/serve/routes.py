"""The HTTP routes: probes, model card, metrics, docs (local assets), and the predictions.

Every GET route also answers HEAD (documented as its own operation). Routes take the request
itself, not FastAPI form parameters, so bodies stream through ``vitkit.serve.uploads``.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import fastapi_offline
from fastapi import FastAPI, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles

from vitkit.serve import schemas
from vitkit.serve.errors import BadInput, error_response
from vitkit.serve.explain import Method, wants_png
from vitkit.serve.runner import ModelRunner
from vitkit.serve.service import Service
from vitkit.serve.uploads import Upload

STATIC = Path(__file__).resolve().parent / "static"
# Swagger UI's files from a PyPI package (fastapi-offline): /docs works with no internet.
DOCS_ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"
TopK = Query(5, ge=1, le=1000, description="How many labels to return per image.")
ModelName = Query(
    None,
    max_length=200,
    description="Which model (GET /v1/models lists them); default: the service's first.",
)


def get_and_head(app: FastAPI, path: str, **options: Any) -> Callable[[Any], Any]:
    """``@app.get`` that also registers HEAD for the same handler (its own operation id)."""

    def register(handler: Any) -> Any:
        app.get(path, **options)(handler)
        head = {**options, "operation_id": f"{handler.__name__}_head"}
        head["summary"] = f"{options.get('summary') or handler.__name__} (headers only)"
        app.head(path, **head)(handler)
        return handler

    return register


def add_page_and_docs(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/docs-assets", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")

    @get_and_head(app, "/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @get_and_head(app, "/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon.png",
        )


def add_probe_routes(app: FastAPI, service: Service) -> None:
    @get_and_head(
        app, "/healthz", summary="Liveness: the process answers", response_model=schemas.Health
    )
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @get_and_head(
        app,
        "/readyz",
        summary="Readiness: the model is loaded and warmed up",
        response_model=schemas.Ready,
        responses=schemas.responses_for(503),
    )
    async def readyz() -> Response:
        if service.ready:
            models = [runner.name for runner in service.runners]
            return JSONResponse({"status": "ready", "model": models[0], "models": models})
        detail = (
            "a model failed to load: see the server log"
            if service.load_error
            else "the models are still loading"
        )
        return error_response(503, "not_ready", detail, retry_after=5)

    @get_and_head(
        app,
        "/v1/model",
        summary="The served model: name, labels, config, limits",
        response_model=schemas.ModelInfo,
        responses=schemas.responses_for(404, 422, 503),
    )
    async def model_info(model: str | None = ModelName) -> dict[str, Any]:
        return service.runner(model).describe()

    @get_and_head(
        app,
        "/v1/models",
        summary="Every served model, with what each costs in memory",
        response_model=schemas.ModelList,
        responses=schemas.responses_for(503),
    )
    async def models() -> dict[str, Any]:
        service.require_ready()
        return {
            "default": service.default.name,
            "models": [runner.describe() for runner in service.runners],
            "memory_bound_bytes": service.settings.memory_bound(len(service.runners)),
        }

    @get_and_head(
        app,
        "/metrics",
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses={200: schemas.METRICS_200},
    )
    async def metrics() -> Response:
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)


def add_prediction_routes(app: FastAPI, service: Service) -> None:
    add_classify_routes(app, service)
    add_explain_route(app, service)
    add_embed_route(app, service)


def best(predictions: list[dict[str, Any]]) -> dict[str, Any]:
    """The answer of /predict_image_class: the best label first, every prediction after it."""
    answer = {
        "predicted_class": predictions[0]["label"],
        "score": predictions[0]["score"],
        "predictions": predictions,
    }
    if "positive" in predictions[0]:  # a multi-label model: the labels that pass
        answer["present"] = [p["label"] for p in predictions if p["positive"]]
    if "decoded_scale" in predictions[0]:
        answer["decoded_scale"] = predictions[0]["decoded_scale"]
    return answer


async def classify(
    service: Service, runner: ModelRunner, inputs: Any, top_k: int
) -> list[list[dict[str, Any]]]:
    """Top-k per image; an image decoded at a reduced scale says so in each of its predictions."""
    runner.require_head()

    async def work(uploads: list[Upload], deadline: float) -> Any:
        return await runner.classify(uploads, deadline, top_k)

    answers, scales = await service.run(inputs, work)
    for predictions, scale in zip(answers, scales, strict=True):
        if scale < 1:
            for prediction in predictions:
                prediction["decoded_scale"] = scale
    return answers


def add_classify_routes(app: FastAPI, service: Service) -> None:
    @app.get(
        "/predict_image_class",
        summary="Classify the image at a URL",
        response_model=schemas.BestPrediction,
        response_model_exclude_none=True,  # single-label answers stay {label, score}
        responses=schemas.url_responses(),
    )
    async def predict_url(
        image_url: str = Query(
            ...,
            description="http(s) URL of the image",
            max_length=8192,
            # Documented, not enforced here: the fetcher refuses other schemes itself with a
            # 400 url_not_allowed that names the URL (a 422 would say less).
            json_schema_extra={"pattern": "^[hH][tT][tT][pP][sS]?://"},
        ),
        top_k: int = TopK,
        model: str | None = ModelName,
    ) -> dict[str, Any]:
        runner = service.runner(model)
        return best((await classify(service, runner, service.url(image_url), top_k))[0])

    @app.post(
        "/predict_image_class",
        summary="Classify an uploaded image (multipart field 'image')",
        response_model=schemas.BestPrediction,
        response_model_exclude_none=True,
        responses=schemas.responses_for(*schemas.UPLOAD_ERRORS),
        openapi_extra={"requestBody": schemas.IMAGE_BODY},
    )
    async def predict_upload(
        request: Request, top_k: int = TopK, model: str | None = ModelName
    ) -> dict[str, Any]:
        inputs = service.body(request, "image")
        return best((await classify(service, service.runner(model), inputs, top_k))[0])

    @app.post(
        "/v1/predict",
        summary="Classify one or more images (multipart files or a raw image body)",
        response_model=list[list[schemas.Prediction]],
        response_model_exclude_none=True,
        responses=schemas.responses_for(*schemas.UPLOAD_ERRORS),
        openapi_extra={"requestBody": schemas.FILES_BODY},
    )
    async def predict(
        request: Request, top_k: int = TopK, model: str | None = ModelName
    ) -> list[list[dict[str, Any]]]:
        return await classify(service, service.runner(model), service.body(request), top_k)


def add_explain_route(app: FastAPI, service: Service) -> None:
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
        response_model=None,
        responses={200: schemas.EXPLAIN_200, **schemas.responses_for(*schemas.UPLOAD_ERRORS)},
        openapi_extra={"requestBody": schemas.IMAGE_BODY},
    )
    async def explain(
        request: Request,
        top_k: int = TopK,
        method: Literal["rollout", "cls"] = Query("rollout", description="which map"),
        format: Literal["json", "png"] | None = Query(
            None, description="png: the overlay only (default: by the Accept header, else json)"
        ),
        model: str | None = ModelName,
    ) -> Response:
        chosen: Method = method
        runner = service.runner(model)
        runner.require_ready()

        async def work(uploads: list[Upload], deadline: float) -> Any:
            if len(uploads) != 1:
                raise BadInput(
                    f"{len(uploads)} images sent: /v1/explain takes one image per request"
                )
            return await runner.explain(uploads[0], deadline, top_k, chosen)

        explanation, png, scale = await service.run(service.body(request), work)
        if format == "png" or (format is None and wants_png(request.headers.get("accept", ""))):
            return Response(png, media_type="image/png")
        attention_map = explanation.maps[method]
        answer = {
            "model": runner.name,
            "method": method,
            "predictions": explanation.predictions,
            "grid": list(attention_map.shape),
            "attention_map": attention_map.round(6).tolist(),
            "overlay_png_base64": base64.b64encode(png).decode("ascii"),
        }
        if scale < 1:
            answer["decoded_scale"] = scale
        return JSONResponse(answer)


def add_embed_route(app: FastAPI, service: Service) -> None:
    @app.post(
        "/v1/embed",
        summary="Pooled embeddings of one or more images",
        response_model=schemas.Embeddings,
        responses=schemas.responses_for(*schemas.UPLOAD_ERRORS),
        openapi_extra={"requestBody": schemas.FILES_BODY},
    )
    async def embed(
        request: Request,
        pool: Literal["cls", "mean", "cls+mean", "pooler"] | None = Query(
            None, description="default: the model family's documented embedding"
        ),
        model: str | None = ModelName,
    ) -> dict[str, Any]:
        runner = service.runner(model)
        used = runner.embed_pool(pool)
        runner.check_pool(used)

        async def work(uploads: list[Upload], deadline: float) -> Any:
            return await runner.embed(uploads, deadline, used)

        vectors, scales = await service.run(service.body(request), work)
        answer = {"model": runner.name, "pool": used, "dim": len(vectors[0]), "embeddings": vectors}
        if any(scale < 1 for scale in scales):
            answer["decoded_scales"] = scales
        return answer
