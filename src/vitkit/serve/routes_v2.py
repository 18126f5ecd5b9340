"""The Open Inference Protocol v2 routes (``/v2/...``), a thin adapter over the model runners.

A served model takes ``image`` (BYTES, shape [N]: encoded images, any format the service reads)
or ``pixel_values`` (FP32, [N, 3, H, W], already preprocessed as the model's
preprocessor_config.json says), and answers ``labels`` (BYTES [N, k]) and ``scores`` (FP32
[N, k]) - the same answers as ``POST /v1/predict`` - plus ``decoded_scale`` (FP32 [N], 1.0 unless
an oversized JPEG was decoded at a reduced scale); a model without a head, or a request that
asks for them, gets ``embeddings`` (FP32 [N, D]). Request parameters: ``top_k`` (default 5) and
``pool`` (the embedding's pooling). Every model has one version, "1".

The request body is spooled like any upload; it is parsed in the model's decode threads once
the request is admitted, so an admitted request holds no more memory than a /v1 one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from vitkit.serve import schemas
from vitkit.serve.decoding import decode_uploads
from vitkit.serve.errors import BadInput, ModelNotFound, error_response
from vitkit.serve.protocol_v2 import (
    HEADER_LENGTH,
    InferRequest,
    ModelMetadata,
    Output,
    ServerMetadata,
    Tensor,
    encode_response,
    parse_request,
    wants_binary,
)
from vitkit.serve.runner import ModelRunner
from vitkit.serve.service import Service
from vitkit.serve.uploads import Upload

VERSION = "1"
CLASSIFIER_OUTPUTS = ("labels", "scores", "decoded_scale")
EMBEDDER_OUTPUTS = ("embeddings", "decoded_scale")
ALL_OUTPUTS = ("labels", "scores", "embeddings", "decoded_scale")
PLATFORM = "vitkit_pytorch"
ExtraOutput = Callable[[ModelRunner, InferRequest, torch.Tensor, float], Awaitable[Output]]
EXTRA_OUTPUTS: dict[str, ExtraOutput] = {}
"""Outputs a model kind adds (``vitkit.serve`` docstring): name -> ``(runner, request, pixels,
deadline) -> Output``, run when a request asks for that output by name."""
EXTRA_METADATA: list[Callable[[ModelRunner], list[dict[str, Any]]]] = []
"""For each model, the extra outputs it offers, as v2 tensor metadata (``[]`` for none)."""


@dataclass
class EncodedImage:
    """One BYTES element, read like an upload by the decode step."""

    name: str
    data: bytes

    def read(self) -> bytes:
        return self.data


def add_v2_routes(app: FastAPI, service: Service, server_version: str) -> None:
    add_v2_probes(app, service, server_version)
    add_v2_models(app, service)
    add_v2_infer(app, service)


def add_v2_probes(app: FastAPI, service: Service, server_version: str) -> None:
    @app.get("/v2", summary="Server metadata (Open Inference Protocol)", tags=["v2"],
             response_model=ServerMetadata, responses=schemas.v2_responses())  # fmt: skip
    async def server_metadata() -> dict[str, Any]:
        return {"name": "vitkit", "version": server_version, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live", summary="Server liveness", tags=["v2"],
             response_model=schemas.Live)  # fmt: skip
    async def server_live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", summary="Server readiness: every model loaded", tags=["v2"],
             response_model=schemas.ReadyV2, responses=schemas.v2_responses(503))  # fmt: skip
    async def server_ready() -> Response:
        if service.ready:
            return JSONResponse({"ready": True})
        return error_response(503, "not_ready", "the models are still loading", 5, protocol_v2=True)


def model_of(service: Service, name: str, version: str | None = None) -> ModelRunner:
    if version not in (None, VERSION):
        raise ModelNotFound(f"model {name!r} has no version {version!r} (only {VERSION!r})")
    return service.runner(name)


def add_v2_models(app: FastAPI, service: Service) -> None:
    errors = schemas.v2_responses(404, 422, 503)

    @app.get("/v2/models/{model_name}", summary="Model metadata", tags=["v2"],
             response_model=ModelMetadata, responses=errors)  # fmt: skip
    async def model_metadata(model_name: str) -> dict[str, Any]:
        return metadata(model_of(service, model_name))

    @app.get("/v2/models/{model_name}/versions/{model_version}", tags=["v2"],
             summary="Model metadata (one version)", response_model=ModelMetadata,
             responses=errors)  # fmt: skip
    async def version_metadata(model_name: str, model_version: str) -> dict[str, Any]:
        return metadata(model_of(service, model_name, model_version))

    @app.get("/v2/models/{model_name}/ready", summary="Model readiness", tags=["v2"],
             response_model=schemas.ModelReadyV2, responses=errors)  # fmt: skip
    async def model_ready(model_name: str) -> dict[str, Any]:
        runner = model_of(service, model_name)
        runner.require_ready()
        return {"name": runner.name, "ready": True}

    @app.get("/v2/models/{model_name}/versions/{model_version}/ready", tags=["v2"],
             summary="Model readiness (one version)", response_model=schemas.ModelReadyV2,
             responses=errors)  # fmt: skip
    async def version_ready(model_name: str, model_version: str) -> dict[str, Any]:
        runner = model_of(service, model_name, model_version)
        runner.require_ready()
        return {"name": runner.name, "ready": True}


def metadata(runner: ModelRunner) -> dict[str, Any]:
    classifier, _ = runner.require_ready()
    height, width = classifier.processor.size
    outputs = [{"name": "embeddings", "datatype": "FP32", "shape": [-1, -1]}]
    if classifier.config.num_labels:
        outputs[:0] = [
            {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
        ]
    outputs.append({"name": "decoded_scale", "datatype": "FP32", "shape": [-1]})
    for offered in EXTRA_METADATA:
        outputs.extend(offered(runner))
    return {
        "name": runner.name,
        "versions": [VERSION],
        "platform": PLATFORM,
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
            {"name": "pixel_values", "datatype": "FP32", "shape": [-1, 3, height, width]},
        ],
        "outputs": outputs,
    }


def add_v2_infer(app: FastAPI, service: Service) -> None:
    options: dict[str, Any] = {
        "tags": ["v2"],
        "response_model": None,
        "responses": {200: schemas.V2_INFER_200, **schemas.v2_responses(*schemas.V2_INFER_ERRORS)},
        "openapi_extra": {"requestBody": schemas.V2_INFER_BODY},
    }

    @app.post("/v2/models/{model_name}/infer", summary="Run the model", **options)
    async def infer(model_name: str, request: Request) -> Response:
        return await run_infer(service, model_of(service, model_name), request)

    @app.post(
        "/v2/models/{model_name}/versions/{model_version}/infer",
        summary="Run the model (one version)",
        **options,
    )
    async def version_infer(model_name: str, model_version: str, request: Request) -> Response:
        return await run_infer(service, model_of(service, model_name, model_version), request)


async def run_infer(service: Service, runner: ModelRunner, request: Request) -> Response:
    runner.require_ready()
    header_length = request.headers.get(HEADER_LENGTH)
    async with service.received(service.body(request)) as uploads:
        body = uploads[0]

        async def work(deadline: float) -> Response:
            prepared = await runner.on_the_way(
                runner.in_thread(partial(_prepare, runner, body, header_length, deadline))
            )
            parsed, pixels, scales = prepared
            outputs = await _outputs(runner, parsed, pixels, scales, deadline)
            content, json_length = encode_response(runner.name, parsed, outputs)
            if json_length is None:
                return Response(content, media_type="application/json")
            headers = {"Inference-Header-Content-Length": str(json_length)}
            return Response(content, media_type="application/octet-stream", headers=headers)

        return await service.run_admitted(work)


def _prepare(
    runner: ModelRunner, body: Upload, header_length: str | None, deadline: float
) -> tuple[InferRequest, torch.Tensor, list[float]]:
    """In a decode thread: parse the body, then decode its images (or check its tensor)."""
    parsed = parse_request(body.file, body.size, header_length)
    unknown = sorted(set(parsed.inputs) - {"image", "pixel_values"})
    if unknown or len(parsed.inputs) != 1:
        raise BadInput(
            f"inputs {sorted(parsed.inputs)}: give exactly one of 'image' (BYTES, encoded "
            "images) or 'pixel_values' (FP32 [N, 3, H, W])"
        )
    classifier, _ = runner.require_ready()
    if "pixel_values" in parsed.inputs:
        pixels = _pixel_tensor(parsed.inputs["pixel_values"], classifier.processor.size)
        return parsed.request, pixels, [1.0] * pixels.shape[0]
    images = parsed.inputs["image"]
    if images.datatype != "BYTES" or not isinstance(images.data, list):
        raise BadInput("input 'image': datatype must be BYTES (encoded images)")
    if not 1 <= len(images.data) <= runner.settings.max_files:
        raise BadInput(
            f"input 'image': {len(images.data)} images; send 1 to {runner.settings.max_files}"
        )
    encoded = [EncodedImage(f"image[{i}]", data) for i, data in enumerate(images.data)]
    assert runner.upload_processor is not None
    decoded = decode_uploads(
        runner.upload_processor, classifier.processor_mode, encoded, runner.pixels, deadline
    )
    return parsed.request, decoded.pixels, decoded.scales


def _pixel_tensor(tensor: Tensor, size: tuple[int, int]) -> torch.Tensor:
    expected = [3, *size]
    if tensor.datatype != "FP32" or not isinstance(tensor.data, np.ndarray):
        raise BadInput("input 'pixel_values': datatype must be FP32")
    if len(tensor.shape) != 4 or tensor.shape[1:] != expected or tensor.shape[0] < 1:
        raise BadInput(
            f"input 'pixel_values': shape {tensor.shape}; this model takes [N, {expected[0]}, "
            f"{expected[1]}, {expected[2]}] (N >= 1)"
        )
    if not np.isfinite(tensor.data).all():
        raise BadInput("input 'pixel_values': NaN or infinite values")
    return torch.from_numpy(tensor.data.reshape(tensor.shape))


def _requested(request: InferRequest, has_head: bool) -> list[str]:
    if not request.outputs:
        return list(CLASSIFIER_OUTPUTS if has_head else EMBEDDER_OUTPUTS)
    names = [output.name for output in request.outputs]
    for name in names:
        if name in EXTRA_OUTPUTS:
            continue
        if name not in ALL_OUTPUTS or (name in ("labels", "scores") and not has_head):
            offered = ALL_OUTPUTS if has_head else EMBEDDER_OUTPUTS
            raise BadInput(f"output {name!r}: this model offers {', '.join(offered)}")
    return names


def _int_parameter(request: InferRequest, name: str, default: int, high: int) -> int:
    value = request.parameters.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
        raise BadInput(f"parameter {name!r}: a whole number in 1..{high}")
    return value


async def _outputs(
    runner: ModelRunner,
    request: InferRequest,
    pixels: torch.Tensor,
    scales: list[float],
    deadline: float,
) -> list[Output]:
    classifier, _ = runner.require_ready()
    names = _requested(request, bool(classifier.config.num_labels))
    count = int(pixels.shape[0])
    values: dict[str, Output] = {
        "decoded_scale": Output("decoded_scale", "FP32", [count], np.asarray(scales))
    }
    if "labels" in names or "scores" in names:
        top_k = _int_parameter(request, "top_k", 5, 1000)
        answers = await runner.classify_pixels(pixels, deadline, top_k)
        k = min(min(len(row) for row in answers), top_k)
        labels = [[p["label"] for p in row[:k]] for row in answers]
        scores = np.asarray([[p["score"] for p in row[:k]] for row in answers], dtype=np.float32)
        values["labels"] = Output("labels", "BYTES", [count, k], labels)
        values["scores"] = Output("scores", "FP32", [count, k], scores)
    if "embeddings" in names:
        pool = request.parameters.get("pool")
        if pool is not None and not isinstance(pool, str):
            raise BadInput("parameter 'pool': cls, mean, cls+mean or pooler")
        used = runner.embed_pool(pool)
        runner.check_pool(used)
        vectors = np.asarray(await runner.embed_pixels(pixels, deadline, used), np.float32)
        values["embeddings"] = Output("embeddings", "FP32", list(vectors.shape), vectors)
    for name in names:
        if name in EXTRA_OUTPUTS:
            values[name] = await EXTRA_OUTPUTS[name](runner, request, pixels, deadline)
    chosen = [values[name] for name in names]
    for output in chosen:
        output.binary = wants_binary(request, output.name)
    return chosen
