"""`vitkit.load()` and the Classifier: images in, labels or embeddings out.

This is the one place where the flow of DESIGN.md is assembled:
image source -> images (decode) -> processor (tensors) -> model [over TTA views] -> head
(softmax, or sigmoid + thresholds; vitkit.inference.heads) -> labels.
The CLI, the server and the benchmarks all go through it; none re-implements a step.

The model is any registered model type (``vitkit.checkpoints.registry``: ViT, DeiT student,
ResNet, an ONNX export): the Classifier only uses the protocol of ``vitkit.models.protocol``.
Constructing one changes nothing process-wide (see ``runtime.tune_process_for_inference``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitkit.checkpoints import imagenet_labels, load_model, save_model
from vitkit.checkpoints.registry import (
    LoadedModel,
    default_processor_config,
    resized_processor_config,
)
from vitkit.errors import NoClassificationHeadError, VitkitError
from vitkit.images.fetch import FetchPolicy, hosts_from
from vitkit.images.processor import ImageProcessor
from vitkit.inference import runtime
from vitkit.inference import tta as tta_views
from vitkit.inference.heads import Head, Thresholds, head_for
from vitkit.inference.settings import (
    DEFAULT_MODEL,
    DEFAULT_THREADS,
    DEFAULT_TOP_K,
    LoadSettings,
    default_model_name,
)
from vitkit.models.protocol import Pool, VisionModel, check_pool, logits_of

__all__ = [
    "DEFAULT_MODEL",
    "Classifier",
    "LoadSettings",
    "default_model_name",
    "load",
    "load_settings",
    "resized_processor_config",
    "top_k_predictions",
]

Prediction = dict[
    str, Any
]  # {"label": str, "score": float}: the shape transformers' pipeline returns


def pick_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_labels(model: VisionModel) -> list[str]:
    """The model's labels; ImageNet-1k names for a 1000-class head whose config lacks real ones."""
    labels: list[str] = model.config.labels()
    placeholders = all(label == f"LABEL_{i}" for i, label in enumerate(labels))
    if len(labels) == 1000 and placeholders:
        return list(imagenet_labels())
    return labels


def top_k_predictions(
    logits: torch.Tensor, labels: Sequence[str], top_k: int
) -> list[list[Prediction]]:
    """(B, classes) logits -> per image the top-k ``{"label", "score"}`` (softmax), best first.

    For a softmax head only; ``Classifier.answer`` speaks for any head."""
    return Head(tuple(labels)).answer(Head(tuple(labels)).probabilities(logits), top_k)


def batched(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Classifier:
    """A model (any registered type) with its preprocessing and labels, ready to classify or
    embed images."""

    def __init__(
        self,
        model: VisionModel,
        processor: Any = None,
        *,
        name: str = "vitkit-model",
        device: str | torch.device | None = "cpu",
        precision: str = "fp32",
        processor_mode: str | None = None,
        problem_type: str | None = None,
        threshold: Thresholds | None = None,
        tta: str = "none",
        threads: int | str | None = DEFAULT_THREADS,
    ) -> None:
        self.device = pick_device(device)
        self.precision = precision
        self.model: Any = model.eval().to(self.device)
        self.processor = (
            processor
            if processor is not None
            else ImageProcessor.from_dict(default_processor_config(model.config))
        )
        self.processor_mode = processor_mode  # None: the processor's own default ("pil" or "fast")
        self.name = name
        self.labels = resolve_labels(model)
        # softmax or sigmoid + thresholds (vitkit.inference.heads says which, and why)
        self.head: Head | None = (
            head_for(model.config, self.labels, problem_type=problem_type, threshold=threshold)
            if self.has_head
            else None
        )
        self.tta = tta_views.check_mode(tta)  # views averaged by probabilities / embed_tensor
        self.threshold_given = threshold is not None  # else the saved thresholds (or 0.5)
        self._forward = self._build_forward(precision, threads)

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def has_head(self) -> bool:
        return bool(self.config.num_labels)

    @property
    def model_type(self) -> str:
        return str(self.config.model_type)

    def _build_forward(self, precision: str, threads: int | str | None) -> Any:
        """The callable that runs the network, from vitkit.inference.runtime: threads by batch
        size, the [CLS]-only logits path, int8 / bf16 copies of the model."""
        return runtime.optimize(
            self.model, precision=precision, device=self.device, threads=threads
        )

    # ---- tensors in -----------------------------------------------------------------------
    def prepare(self, images: Sequence[Any] | Any) -> torch.Tensor:
        """Decode and preprocess images into a (B, 3, H, W) float32 batch."""
        return self.processor(images, mode=self.processor_mode)

    @torch.inference_mode()
    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self.require_head()
        return logits_of(self._forward(pixel_values.to(self.device))).float()

    @torch.inference_mode()
    def probabilities(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, labels) softmax or sigmoid scores, averaged over the TTA views (one forward)."""
        head = self.require_head()
        return tta_views.averaged(
            lambda views: head.probabilities(self.logits(views)), pixel_values, self.tta
        )

    def answer(
        self, probabilities: torch.Tensor, top_k: int | None = None
    ) -> list[list[Prediction]]:
        """Per image, ``{"label", "score"}`` best first (plus threshold / positive for multi-label)."""
        return self.require_head().answer(probabilities, top_k)

    def predict_tensor(
        self, pixel_values: torch.Tensor, top_k: int | None = DEFAULT_TOP_K
    ) -> list[list[Prediction]]:
        return self.answer(self.probabilities(pixel_values), top_k)

    @property
    def default_pool(self) -> str:
        """The embedding this model type gives when asked for none ([CLS] for a ViT, the
        averaged feature map for a CNN)."""
        return str(self.model.capabilities.default_pool)

    @torch.inference_mode()
    def embed_tensor(self, pixel_values: torch.Tensor, pool: Pool | None = None) -> torch.Tensor:
        """(B, dim) embeddings, or (B, tokens, dim) for pool="tokens"; ``pool`` is one of the
        model's ``capabilities.pools`` (default: its ``default_pool``), averaged over the TTA views."""
        chosen = pool or self.default_pool
        check_pool(self.model, chosen)
        if chosen == "tokens" and self.tta != "none":
            raise VitkitError(
                "pool='tokens' with TTA: the views' token grids are turned and mirrored, so their "
                "mean means nothing; use pool cls / mean / pooler, or tta none"
            )
        # through the runtime: its threads and sub-batches, and the int8 / bf16 model if chosen
        return tta_views.averaged(
            lambda views: self._forward.embed(views, chosen).float(), pixel_values, self.tta
        )

    # ---- images in ------------------------------------------------------------------------
    def predict(
        self, images: Sequence[Any] | Any, top_k: int | None = None, batch_size: int = 32
    ) -> list[list[Prediction]]:
        """Per image, ``{"label", "score"}`` best first: the top-k (default 5) of a single-label
        head; every label (or the top-k and every label that passes) of a multi-label head, each
        with its ``threshold`` and ``positive``."""
        self.require_head()
        items = _as_list(images)
        results: list[list[Prediction]] = []
        for chunk in batched(items, batch_size):
            results.extend(self.predict_tensor(self.prepare(list(chunk)), top_k))
        return results

    def embed(
        self, images: Sequence[Any] | Any, pool: Pool | None = None, batch_size: int = 32
    ) -> np.ndarray:
        """One embedding per image: (N, dim), or (N, tokens, dim) for pool='tokens'."""
        items = _as_list(images)
        parts = [
            self.embed_tensor(self.prepare(list(chunk)), pool).cpu()
            for chunk in batched(items, batch_size)
        ]
        return torch.cat(parts).numpy()

    def save(self, directory: str | Path) -> None:
        """Write an HF-format directory (config.json, model.safetensors, preprocessor_config.json)
        in the model type's own layout."""
        save_model(self.model, directory, processor_config=self.processor.to_dict())

    def require_head(self) -> Head:
        """The head; NoClassificationHeadError (pointing to embed / train) for a headless checkpoint."""
        if self.head is None:
            raise NoClassificationHeadError(
                f"{self.name} has no classification head (it is a feature extractor, like "
                "google/vit-large-patch16-224-in21k). Use `vitkit embed` / Classifier.embed() "
                "for embeddings, or fine-tune a head on your images with `vitkit train`."
            )
        return self.head


def _as_list(images: Sequence[Any] | Any) -> list[Any]:
    if isinstance(images, list | tuple):
        return list(images)
    return [images]


def load(
    source: str | Path | None = None,
    settings: LoadSettings | None = None,
    *,
    device: str | torch.device | None = None,
    image_size: int | tuple[int, int] | None = None,
    precision: str | None = None,
    processor_mode: str | None = None,
    jpeg_draft: bool | None = None,
    problem_type: str | None = None,
    threshold: Thresholds | None = None,
    tta: str | None = None,
    overrides: dict[str, Any] | None = None,
    threads: int | str | None = None,
) -> Classifier:
    """Load any checkpoint of any registered model type (``vitkit.checkpoints.registry``): a HF
    directory or hub id (ViT, DeiT student, ResNet), a timm file, a Google .npz, an .onnx export.

    ``settings`` (``vitkit.inference.settings.LoadSettings``) says it all, whole; the keywords
    are the same fields one by one (a keyword given wins over ``settings``; left out, it takes the
    default written in ``LoadSettings``), and ``source`` is its ``model``: ``$VITKIT_MODEL`` or
    google/vit-base-patch16-224 when neither says. ``image_size`` resamples the position
    embeddings at load time (e.g. a 224 checkpoint used at 384). ``jpeg_draft`` (APPROXIMATE):
    decode JPEGs at a reduced DCT scale before the resize, faster but no longer the checkpoint's
    exact preprocessing. ``problem_type`` (single_label / multi_label) overrides what the
    checkpoint says its head is, ``threshold`` (one, or one per label) its saved multi-label
    thresholds, and ``tta`` (none, flip, rot90, d4) averages every answer over flips and quarter
    turns (vitkit.inference.tta). ``overrides``: model settings the checkpoint does not record
    (``--model-arg KEY=VALUE``), e.g. ``{"num_attention_heads": 24}`` for a timm file of an
    unusual width. ``threads`` (CPU): intra-op threads per forward, a number (by default
    ``DEFAULT_THREADS``: the cores this process may run on, fixed, so answers do not depend
    on what else the machine runs) or
    "auto" (by batch size and machine load: ``vitkit.inference.runtime.auto_threads``).
    ``allow_private_urls`` / ``allow_hosts`` (settings only): which URLs ``predict`` and
    ``embed`` may fetch (public addresses only by default).
    """
    given = {
        "model": str(source) if source is not None else None,
        "device": device,
        "image_size": image_size,
        "precision": precision,
        "processor_mode": processor_mode,
        "jpeg_draft": jpeg_draft,
        "problem_type": problem_type,
        "threshold": threshold,
        "tta": tta,
        "overrides": overrides,
        "threads": threads,
    }
    chosen = (settings or LoadSettings()).replace(
        **{key: value for key, value in given.items() if value is not None}
    )
    return load_settings(chosen)


def load_settings(settings: LoadSettings) -> Classifier:
    """``load`` for a ``LoadSettings``, whole."""
    name = settings.source
    if name.endswith(".onnx") and (settings.precision != "fp32" or settings.jpeg_draft):
        raise VitkitError(
            f"{name}: an ONNX model runs as exported; for int8 use "
            "vitkit.checkpoints.onnx.quantize_onnx_int8"
        )
    loaded = load_model(
        name,
        image_size=settings.image_size,
        device=pick_device(settings.device),
        overrides=settings.overrides,
    )
    processor = dataclasses.replace(
        processor_for(loaded, settings.jpeg_draft), fetch=fetch_policy(settings)
    )
    return Classifier(
        loaded.model,
        processor,
        name=name,
        device=settings.device,
        precision=settings.precision,
        processor_mode=settings.processor_mode,
        problem_type=settings.problem_type,
        threshold=settings.threshold,
        tta=settings.tta,
        threads=settings.threads,
    )


def fetch_policy(settings: LoadSettings) -> FetchPolicy:
    """How the classifier's processor fetches URL inputs: public addresses only, unless the
    settings allow private ones or name hosts."""
    return FetchPolicy(
        allow_private=settings.allow_private_urls, allowlist=hosts_from(settings.allow_hosts)
    )


def processor_for(loaded: LoadedModel, jpeg_draft: bool = False) -> ImageProcessor:
    """The checkpoint's preprocessing (or its model type's default), at the loaded size."""
    processor = ImageProcessor.from_dict(loaded.preprocessing())
    return dataclasses.replace(processor, jpeg_draft=True) if jpeg_draft else processor
