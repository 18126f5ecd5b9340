"""Segment images with a segmentation model: pixels in, one class per pixel out.

``SegmentationRunner`` holds a model that gives per-pixel logits (``capabilities.dense``: a
``Segmenter`` with a DPT or linear head, a transformers DPT directory) and its preprocessing
(``DenseProcessor``: transformers' ``DPTImageProcessor``). ``segment`` follows transformers'
``post_process_semantic_segmentation`` exactly: the logits of each image are resized bilinearly
to the image's own size, then the arg-max class is taken per pixel. ``probabilities`` gives the
softmax at a chosen size instead, which is what overlapping slide tiles are blended with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vitkit.checkpoints import LoadedModel, load_model
from vitkit.errors import UnsupportedOperationError, UsageError
from vitkit.images.decode import describe
from vitkit.images.masks import class_areas
from vitkit.images.processor.dense import DenseProcessor
from vitkit.inference.classifier import fetch_policy, pick_device
from vitkit.inference.runtime import auto_threads, num_threads
from vitkit.inference.settings import LoadSettings
from vitkit.models.protocol import model_type_of
from vitkit.models.segmentation import upsample_logits

# What a classifier's settings mean that a per-pixel model has no use for.
_CLASSIFIER_ONLY = {
    "threshold": "--threshold",
    "problem_type": "--problem-type",
    "jpeg_draft": "--jpeg-draft",
    "processor_mode": "processor_mode",
}


def refuse_classifier_settings(settings: LoadSettings) -> None:
    """UsageError naming the first setting a segmentation model cannot honour."""
    defaults = LoadSettings()
    for name, flag in _CLASSIFIER_ONLY.items():
        if getattr(settings, name) != getattr(defaults, name):
            raise UsageError(f"{flag}: classifier setting; a segmentation model answers per pixel")
    if settings.tta != "none":
        raise UsageError("--tta: test-time augmentation is for classifiers, not segmentation")
    if settings.precision != "fp32":
        raise UsageError(f"--precision {settings.precision}: segmentation models run in fp32")


class _Flops:
    """A stand-in for ``auto_threads``: the counted work of one image."""

    def __init__(self, flops: float) -> None:
        self.flops = flops

    def flops_per_image(self, image_hw: tuple[int, int] | None = None) -> float:
        return self.flops


@dataclass
class SegmentationResult:
    """One image's mask at its own size, and how much of it each class covers."""

    source: str
    mask: np.ndarray  # (H, W) uint8 class indices
    labels: list[str]

    def areas(self, pixel_area_um2: float | None = None) -> list[dict[str, Any]]:
        return class_areas(self.mask, self.labels, pixel_area_um2)


class SegmentationRunner:
    """A segmentation model, its preprocessing and device (see the module docstring)."""

    def __init__(
        self,
        model: Any,
        processor: DenseProcessor,
        *,
        device: str | torch.device = "cpu",
        threads: int | str | None = None,
    ) -> None:
        if not getattr(getattr(model, "capabilities", None), "dense", False):
            raise UnsupportedOperationError(
                f"this {model_type_of(model)} model gives one answer per image, not per pixel: "
                "segment with a segmentation model (a DPT directory, or one `vitkit train` made "
                "from images/ + masks/)"
            )
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.labels: list[str] = model.config.labels()
        self.threads = threads  # None: as the process has it; "auto": by work and free cores
        self._flops: dict[tuple[int, int], float] = {}

    @classmethod
    def from_loaded(
        cls, loaded: LoadedModel, *, device: str | torch.device = "cpu", **processor_overrides: Any
    ) -> SegmentationRunner:
        processor = DenseProcessor.from_dict(loaded.preprocessing(), **processor_overrides)
        return cls(loaded.model, processor, device=device)

    @classmethod
    def from_settings(cls, settings: LoadSettings) -> SegmentationRunner:
        """The runner ``LoadSettings`` describe (device, size, threads, URL policy); the
        settings a per-pixel model cannot honour are refused (UsageError naming them)."""
        refuse_classifier_settings(settings)
        device = pick_device(settings.device)
        loaded = load_model(
            settings.source, image_size=settings.image_size, device=device,
            overrides=settings.overrides,
        )  # fmt: skip
        processor = DenseProcessor.from_dict(loaded.preprocessing(), fetch=fetch_policy(settings))
        return cls(loaded.model, processor, device=device, threads=settings.threads)

    @classmethod
    def from_pretrained(
        cls, source: str, *, device: str | torch.device = "cpu", image_size: int | None = None
    ) -> SegmentationRunner:
        return cls.from_loaded(load_model(source, image_size=image_size), device=device)

    # ---- forward ------------------------------------------------------------------------
    @torch.inference_mode()
    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, classes, h, w) float32 logits at the model's own output size."""
        with num_threads(self._threads_for(pixel_values)):
            return self.model.forward_logits(pixel_values.to(self.device)).float()

    def _threads_for(self, pixel_values: torch.Tensor) -> int | None:
        if self.threads is None or self.device.type != "cpu":
            return None
        if self.threads != "auto":
            return int(self.threads)
        size = (int(pixel_values.shape[-2]), int(pixel_values.shape[-1]))
        if size not in self._flops:
            # the encoder's count (arithmetic, free) stands for the whole: the thread choice
            # needs the order of magnitude, and counting the decoder's runs a forward
            backbone = getattr(self.model, "backbone", self.model)
            self._flops[size] = float(backbone.flops_per_image(size))
        return auto_threads(len(pixel_values), _Flops(self._flops[size]), size)

    @torch.inference_mode()
    def probabilities(self, pixel_values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, classes, *size) softmax probabilities, logits resized to ``size`` first."""
        return upsample_logits(self.logits(pixel_values), size).softmax(dim=1)

    @torch.inference_mode()
    def masks(
        self, pixel_values: torch.Tensor, original_sizes: list[tuple[int, int]]
    ) -> list[np.ndarray]:
        """One (H, W) uint8 mask per image at its original size (transformers' post-processing:
        each image's logits resized bilinearly to its size, then the arg-max)."""
        logits = self.logits(pixel_values)
        masks = []
        for row, size in zip(logits, original_sizes, strict=True):
            resized = upsample_logits(row.unsqueeze(0), size)[0]
            masks.append(resized.argmax(dim=0).to(torch.uint8).cpu().numpy())
        return masks

    def segment(self, images: Any) -> list[SegmentationResult]:
        """Masks for one image or a list (paths, bytes, PIL images, arrays), each at its size."""

        sources = list(images) if isinstance(images, list | tuple) else [images]
        results = []
        for source in sources:  # one at a time: images of different sizes do not stack
            batch = self.processor([source])
            mask = self.masks(batch.pixel_values, batch.original_sizes)[0]
            results.append(SegmentationResult(describe(source), mask, self.labels))
        return results
