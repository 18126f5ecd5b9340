"""Segmentation models in the service: ``POST /v1/segment`` and the v2 output "segmentation".

``/v1/segment`` takes one image and answers its mask (a palette PNG of class indices, the
image's size as decoded), the class areas (pixels and share of the image) and an overlay PNG
(the image with each class painted on it, and a legend); ``format=png`` (or ``Accept:
image/png``) answers the mask PNG alone. The mask follows transformers'
``post_process_semantic_segmentation``: logits resized bilinearly to the image, then the
arg-max. A mask whose logits would pass ``MAX_LOGIT_VALUES`` floats (a 48-megapixel photo) is
made at a reduced scale, given as ``mask_scale``.

The v2 protocol's output "segmentation" is UINT8 [N, H, W]: the class of every pixel of the
model input (the images as preprocessed, or the ``pixel_values`` sent).

A classifier's routes refuse a segmentation model (400, saying which route to use), and this
route refuses a classifier.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Hashable
from functools import partial
from typing import Any, Literal

import numpy as np
import torch
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image

from vitkit.images.masks import class_areas, mask_png_bytes, overlay
from vitkit.models.segmentation import upsample_logits
from vitkit.serve import routes_v2, runner, schemas
from vitkit.serve.decoding import header_pixels, reduced_image
from vitkit.serve.errors import BadInput
from vitkit.serve.explain import wants_png
from vitkit.serve.protocol_v2 import InferRequest, Output
from vitkit.serve.routes import ModelName
from vitkit.serve.runner import ModelRunner
from vitkit.serve.service import Service
from vitkit.serve.uploads import Upload

SEGMENT = ("segment",)
MAX_LOGIT_VALUES = 64 * 2**20  # classes x mask pixels held at once while resizing logits


def is_dense(model: Any) -> bool:
    return bool(getattr(getattr(model, "capabilities", None), "dense", False))


def _segment_batch(
    classifier: Any, operation: Hashable, pixels: torch.Tensor, top_k: int
) -> list[torch.Tensor]:
    """On the model thread: (classes, h, w) float32 logits per image."""
    with torch.inference_mode():
        logits = classifier.model.forward_logits(pixels.to(classifier.device)).float().cpu()
    return list(logits)


runner.BATCH_OPERATIONS[SEGMENT[0]] = _segment_batch


def _decode(
    prepare: Any, upload: Upload, max_pixels: int, budget: Any, deadline: float
) -> tuple[Image.Image, torch.Tensor, float]:
    """(the image as decoded, its model input, its decoded scale), within the pixel budget."""
    data = upload.read()
    count, scale = header_pixels(data, upload.name, max_pixels)
    with budget.hold(count, deadline):
        image = reduced_image(data, upload.name, max_pixels)
        return image, prepare([image]), scale


def mask_for(logits: torch.Tensor, height: int, width: int) -> tuple[np.ndarray, float]:
    """(uint8 mask, its scale): logits resized to (height, width), or a smaller scale when
    that many floats would pass MAX_LOGIT_VALUES, then the arg-max."""
    scale = min(1.0, math.sqrt(MAX_LOGIT_VALUES / (logits.shape[0] * height * width)))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    resized = upsample_logits(logits.unsqueeze(0), size)[0]
    return resized.argmax(dim=0).to(torch.uint8).numpy(), scale


async def segment_upload(
    service: Service, model_runner: ModelRunner, upload: Upload, deadline: float
) -> dict[str, Any]:
    classifier, batcher = model_runner.require_ready()
    if not is_dense(classifier.model):
        raise BadInput(f"{model_runner.name} classifies whole images: use /v1/predict")
    work = partial(
        _decode,
        classifier.prepare,
        upload,
        model_runner.settings.max_pixels,
        model_runner.pixels,
        deadline,
    )
    image, pixels, scale = await model_runner.on_the_way(model_runner.in_thread(work))
    [logits] = await batcher.submit(SEGMENT, pixels, deadline=deadline)
    labels = list(classifier.labels)

    def finish() -> dict[str, Any]:
        mask, mask_scale = mask_for(logits, image.height, image.width)
        shown = (
            image
            if mask_scale == 1.0
            else image.resize(mask.shape[::-1], Image.Resampling.BILINEAR)
        )
        buffer = io.BytesIO()
        overlay(shown, mask, labels).save(buffer, format="PNG")
        return {
            "mask": mask_png_bytes(mask),
            "overlay": buffer.getvalue(),
            "areas": class_areas(mask, labels),
            "size": [int(mask.shape[0]), int(mask.shape[1])],
            "decoded_scale": scale,
            "mask_scale": mask_scale,
        }

    return await model_runner.in_thread(finish)


def add_segment_route(app: FastAPI, service: Service) -> None:
    @app.post(
        "/v1/segment",
        summary="A segmentation model's mask, class areas and overlay for one image",
        description=(
            "One image (multipart field `image`, or a raw image body). JSON: `labels`, `size` "
            "[height, width] of the mask, `classes` (per class: `pixels`, `fraction`), "
            "`mask_png_base64` (palette PNG whose values are the class indices) and "
            "`overlay_png_base64`; the mask PNG alone for `format=png` or `Accept: image/png`."
        ),
        response_model=None,
        responses={
            200: {
                "description": "the mask, areas and overlay (JSON), or the mask PNG alone",
                "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
            },
            **schemas.responses_for(*schemas.UPLOAD_ERRORS),
        },
        openapi_extra={"requestBody": schemas.IMAGE_BODY},
    )
    async def segment(
        request: Request,
        format: Literal["json", "png"] | None = Query(
            None, description="png: the mask PNG only (default: by the Accept header, else json)"
        ),
        model: str | None = ModelName,
    ) -> Response:
        model_runner = service.runner(model)
        model_runner.require_ready()

        async def work(uploads: list[Upload], deadline: float) -> Any:
            if len(uploads) != 1:
                raise BadInput(f"{len(uploads)} images sent: /v1/segment takes one per request")
            return await segment_upload(service, model_runner, uploads[0], deadline)

        answer = await service.run(service.body(request), work)
        if format == "png" or (format is None and wants_png(request.headers.get("accept", ""))):
            return Response(answer["mask"], media_type="image/png")
        body: dict[str, Any] = {
            "model": model_runner.name,
            "labels": [row["label"] for row in answer["areas"]],
            "size": answer["size"],
            "classes": answer["areas"],
            "mask_png_base64": base64.b64encode(answer["mask"]).decode("ascii"),
            "overlay_png_base64": base64.b64encode(answer["overlay"]).decode("ascii"),
        }
        for name in ("decoded_scale", "mask_scale"):
            if answer[name] < 1:
                body[name] = answer[name]
        return JSONResponse(body)


async def _v2_segmentation(
    model_runner: ModelRunner, request: InferRequest, pixels: torch.Tensor, deadline: float
) -> Output:
    classifier, batcher = model_runner.require_ready()
    if not is_dense(classifier.model):
        raise BadInput(f"output 'segmentation': {model_runner.name} is not a segmentation model")
    logits = await batcher.submit(SEGMENT, pixels, deadline=deadline)
    size = tuple(pixels.shape[-2:])
    masks = np.stack(
        [upsample_logits(row.unsqueeze(0), size)[0].argmax(0).numpy() for row in logits]
    )
    return Output("segmentation", "UINT8", list(masks.shape), masks.astype(np.uint8))


def _v2_metadata(model_runner: ModelRunner) -> list[dict[str, Any]]:
    classifier, _ = model_runner.require_ready()
    if not is_dense(classifier.model):
        return []
    return [{"name": "segmentation", "datatype": "UINT8", "shape": [-1, -1, -1]}]


routes_v2.EXTRA_OUTPUTS["segmentation"] = _v2_segmentation
routes_v2.EXTRA_METADATA.append(_v2_metadata)
