"""The service's answers as OpenAPI sees them: success bodies, the one error body, every status.

Each route lists the statuses it can answer (``responses_for``), each error with the body it
really sends, ``{"error": code, "detail": text}``; the request bodies (a multipart form or a raw
image) are described by hand because the routes read the body as a stream.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from vitkit.serve.protocol_v2 import InferRequest, InferResponse


class ErrorBody(BaseModel):
    """Every error the service answers (4xx and 5xx)."""

    error: str = Field(description="A stable code, e.g. `unsupported_image`, `overloaded`.")
    detail: str = Field(description="What went wrong and what to do, for people.")


class Prediction(BaseModel):
    label: str
    score: float = Field(ge=0, le=1, description="softmax probability, or sigmoid (multi-label)")
    threshold: float | None = Field(
        None, ge=0, le=1, description="Multi-label models only: the label's decision threshold."
    )
    positive: bool | None = Field(
        None, description="Multi-label models only: the score reached the threshold."
    )
    decoded_scale: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Only when the image was over the pixel cap and decoded at a reduced "
        "scale (a JPEG: 0.5, 0.25 or 0.125); otherwise the image was decoded in full.",
    )


class BestPrediction(BaseModel):
    predicted_class: str = Field(description="The top label (the seed API's field).")
    score: float = Field(ge=0, le=1)
    predictions: list[Prediction]
    present: list[str] | None = Field(
        None, description="Multi-label models only: every label that passes its threshold."
    )
    decoded_scale: float | None = Field(
        None, gt=0, lt=1, description="Only when the image was decoded at a reduced scale."
    )


class Embeddings(BaseModel):
    model: str
    pool: str = Field(description="The pooling used: `cls`, `mean`, `cls+mean` or `pooler`.")
    dim: int
    embeddings: list[list[float]]
    decoded_scales: list[float] | None = Field(
        None,
        description="Only when an image was decoded at a reduced scale: each image's scale "
        "(1.0 for the others).",
    )


class Explanation(BaseModel):
    model: str
    method: Literal["rollout", "cls"]
    predictions: list[Prediction]
    grid: list[int] = Field(description="[rows, cols] of the patch grid.")
    attention_map: list[list[float]] = Field(description="rows x cols, sums to one.")
    overlay_png_base64: str
    decoded_scale: float | None = Field(
        None, gt=0, lt=1, description="Only when the image was decoded at a reduced scale."
    )


class Head(BaseModel):
    problem_type: Literal["single_label_classification", "multi_label_classification"]
    activation: Literal["softmax", "sigmoid"]
    thresholds: dict[str, float] | None = Field(
        None, description="Multi-label models: each label's decision threshold."
    )


class ModelMemory(BaseModel):
    weights_bytes: int = Field(description="Parameters and buffers.")
    rss_added_bytes: int = Field(
        description="Resident memory the service grew by while this model loaded and warmed up."
    )
    decode_buffers_bytes: int = Field(
        description="Encoded image bytes this model's decode threads may hold at once (its "
        "share of the memory bound)."
    )


class ModelInfo(BaseModel):
    name: str = Field(description="The model's public name (never a path on the server).")
    labels: list[str]
    head: Head | None = Field(None, description="What the scores mean; none for an embedder.")
    tta: Literal["none", "flip", "rot90", "d4"] = Field(
        description="Test-time augmentation: answers are the mean over these views."
    )
    config: dict[str, Any]
    device: str
    max_batch_size: int
    max_image_bytes: int = Field(description="Largest body of images in one request.")
    max_pixels: int = Field(
        description="Largest image decoded in full, in pixels (width x height); a JPEG over "
        "it is decoded at a reduced scale when one fits."
    )
    max_files: int
    memory: ModelMemory


class ModelList(BaseModel):
    default: str = Field(description="The model of routes that name none.")
    models: list[ModelInfo]
    memory_bound_bytes: int = Field(
        description="What the service may add to its idle memory under any load (decoding, "
        "uploads), all models together."
    )


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
    model: str = Field(description="The default model.")
    models: list[str]


class Live(BaseModel):
    live: bool


class ReadyV2(BaseModel):
    ready: bool


class ModelReadyV2(BaseModel):
    name: str
    ready: bool


class V2Error(BaseModel):
    """Every error under /v2, as the Open Inference Protocol has it."""

    error: str = Field(description="What went wrong and what to do.")
    code: str = Field(description="A stable code, e.g. `unsupported_image`.")


_MEANING = {
    400: "Not usable input: an unreadable image, an empty body, a refused or malformed URL.",
    401: "No API key, or a wrong one: send `Authorization: Bearer KEY` or `X-API-Key: KEY`.",
    404: "No model of that name is served here (GET /v1/models lists them).",
    405: "The path does not take this method; `Allow` lists the ones it takes.",
    408: "The request body came too slowly (server options --min-transfer-rate, --upload-timeout).",
    413: "Too large: the body (--max-image-bytes), the image (--max-pixels) or the download.",
    415: "Not an image in a supported format (JPEG, PNG, GIF, BMP, TIFF, WebP).",
    422: "A parameter or form field is missing or invalid.",
    429: "Over the rate limit, or too many wrong keys: retry after `Retry-After` seconds.",
    502: "The image URL's server failed (unreachable, HTTP error).",
    503: "Overloaded or still loading: retry after `Retry-After` seconds.",
    504: "No answer within the deadline (the request's, or the image URL's).",
}
_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}
}
UPLOAD_ERRORS = (400, 404, 408, 413, 415, 422, 503, 504)
URL_ERRORS = (400, 404, 413, 415, 422, 502, 503, 504)


def responses_for(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for these error statuses, each with the real error body."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        responses[status] = {"model": ErrorBody, "description": _MEANING[status]}
        if status in (429, 503):
            responses[status]["headers"] = _RETRY_AFTER
    return responses


def url_responses() -> dict[int | str, dict[str, Any]]:
    """``responses_for(*URL_ERRORS)``, where a 400 may also be uvicorn's own plain text: a
    request line longer than it reads (16 KiB; a long non-ASCII URL, percent-encoded) is refused
    before the service sees it."""
    responses = responses_for(*URL_ERRORS)
    responses[400] = {
        **responses[400],
        "description": _MEANING[400] + " A request line over 16 KiB: uvicorn's text/plain 400.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    return responses


def v2_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses_for`` with the Open Inference Protocol's error body."""
    responses = responses_for(*statuses)
    for entry in responses.values():
        entry["model"] = V2Error
    return responses


ACCESS_RESPONSES = {
    401: {
        "model": ErrorBody,
        "description": _MEANING[401],
        "headers": {
            "WWW-Authenticate": {
                "description": "How to authenticate (Bearer).",
                "schema": {"type": "string"},
            }
        },
    },
    429: {"model": ErrorBody, "description": _MEANING[429], "headers": _RETRY_AFTER},
}


_BINARY = {"type": "string", "format": "binary"}
IMAGE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"image": _BINARY},
                "required": ["image"],
            }
        },
        "image/*": {"schema": _BINARY},
    },
}
FILES_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"files": {"type": "array", "items": _BINARY, "minItems": 1}},
                "required": ["files"],
            }
        },
        "image/*": {"schema": _BINARY},
        "application/octet-stream": {"schema": _BINARY},
    },
}
EXPLAIN_200 = {
    "model": Explanation,
    "description": "The map as JSON, or the overlay PNG alone (`format=png` or "
    "`Accept: image/png`).",
    "content": {"image/png": {"schema": _BINARY}},
}
V2_INFER_ERRORS = (400, 404, 408, 413, 415, 422, 503, 504)
V2_INFER_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
        "application/octet-stream": {
            "schema": _BINARY,
            "description": "The binary tensor data extension: the JSON request (its length in "
            "the Inference-Header-Content-Length header) followed by the tensors' bytes.",
        },
    },
}
V2_INFER_200 = {
    "model": InferResponse,
    "description": "The outputs as JSON, or (binary data extension) JSON followed by the binary "
    "outputs, its length in the Inference-Header-Content-Length header.",
    "content": {"application/octet-stream": {"schema": _BINARY}},
}


def v2_request_components() -> dict[str, Any]:
    """OpenAPI component schemas for the v2 infer request (the route reads its body itself)."""
    schema = InferRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    components: dict[str, Any] = schema.pop("$defs", {})
    components["InferRequest"] = schema
    return components


METRICS_200 = {
    "description": "Prometheus text exposition format.",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}
