"""ImageProcessor: a checkpoint's preprocessor_config.json -> (B, 3, H, W) float32 tensors.

Two modes, each bit-identical to its transformers 5 reference on uint8 RGB inputs:

- ``"fast"`` (the default) = ``ViTImageProcessor``, transformers 5's default (what
  ``AutoImageProcessor`` and ``pipeline("image-classification")`` use): torchvision decode and
  uint8 antialiased resize, batched. On one core, 640x480 JPEGs: about 1.7x the reference
  given paths, 2x it after ``load_image``, 2.9x ``ViTImageProcessorPil`` (BENCHMARKS.md).
- ``"pil"`` = ``ViTImageProcessorPil``, the PIL/numpy pipeline of transformers 4 and of the
  published evaluations. Slower (PIL's resize); pick it to reproduce older numbers exactly.

Why "fast" is the default: it is what transformers 5 itself runs by default, it is ~2.4x faster,
and the two modes differ only in the resize filter's integer rounding: on the six sample photos at
most one pixel level (0.0078 after mean = std = 0.5), on 0.1% (bilinear) to 0.3% (bicubic) of
the values. Pick "pil" to reproduce numbers computed with the PIL pipeline bit for bit.

Images are decoded by ``vitkit.images.decode`` (RGB, EXIF-transposed, pixel cap). Transparency is dropped
as transformers' ``load_image`` does, or composited onto white when the config sets
``do_convert_rgb`` (as the reference processors then do).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from vitkit.errors import ProcessorConfigError, VitkitError
from vitkit.images import decode as vio
from vitkit.images.processor import fast_mode, pil_mode
from vitkit.images.processor.sizes import SizeSpec


class SizedConfig(Protocol):
    """A model config that says its input resolution (every vitkit model config does)."""

    @property
    def image_hw(self) -> tuple[int, int]: ...


MODES = ("fast", "pil")
DEFAULT_MODE = "fast"
CONFIG_NAME = "preprocessor_config.json"
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_T = TypeVar("_T")


@dataclass
class PreparedBatch:
    """What ``load_batch`` returns: the inputs that worked, stacked, and why the others did not."""

    pixel_values: torch.Tensor  # (len(indices), 3, H, W) float32
    indices: list[int]  # positions (in the input list) of the rows of pixel_values
    errors: dict[int, VitkitError] = field(default_factory=dict)


def _triple(values: Any, key: str) -> tuple[float, ...]:
    if isinstance(values, (int, float)):
        return (float(values),) * 3
    result = tuple(float(v) for v in values)
    if len(result) != 3:
        raise ProcessorConfigError(f"{key} must have 3 values (one per RGB channel), got {values}")
    return result


@dataclass
class ImageProcessor:
    """Resize -> center crop -> rescale -> normalize, driven by HF ViTImageProcessor fields."""

    do_resize: bool = True
    size_spec: SizeSpec = field(default_factory=lambda: SizeSpec(height=224, width=224))
    resample: int = 2  # PIL codes: 0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming
    do_center_crop: bool = False
    crop_size: SizeSpec | None = None
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    do_convert_rgb: bool | None = None
    mode: str = DEFAULT_MODE
    max_pixels: int | None = vio.DEFAULT_MAX_PIXELS
    fetch: Any = None  # vitkit.images.fetch.FetchPolicy or a callable url -> bytes (for URL inputs)
    # APPROXIMATE, fast mode only, off by default: decode JPEGs at a reduced DCT scale (PIL draft
    # mode) when the image is at least twice the output size. Not equal to either reference.
    jpeg_draft: bool = False

    def __post_init__(self) -> None:
        self.image_mean = _triple(self.image_mean, "image_mean")
        self.image_std = _triple(self.image_std, "image_std")
        if not all(self.image_std):
            raise ProcessorConfigError(f"image_std {self.image_std} contains a zero")
        if self.resample not in _RESAMPLE_NAMES:
            raise ProcessorConfigError(
                f"resample={self.resample!r} is not a PIL filter code (0..5: {_RESAMPLE_NAMES})"
            )
        if self.do_center_crop and (self.crop_size is None or not self.crop_size.is_fixed):
            raise ProcessorConfigError("do_center_crop needs crop_size {height, width}")
        _check_mode(self.mode)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, config: dict[str, Any], **overrides: Any) -> ImageProcessor:
        """From preprocessor_config.json contents; keys it does not use are ignored."""
        data = {**config, **overrides}
        kwargs: dict[str, Any] = {}
        try:
            if "size" in data and data["size"] is not None:
                kwargs["size_spec"] = SizeSpec.parse(data["size"])
            if data.get("crop_size") is not None:
                kwargs["crop_size"] = SizeSpec.parse(data["crop_size"], key="crop_size")
        except ValueError as error:
            raise ProcessorConfigError(str(error)) from None
        for key in (
            "do_resize",
            "resample",
            "do_center_crop",
            "do_rescale",
            "rescale_factor",
            "do_normalize",
            "image_mean",
            "image_std",
            "do_convert_rgb",
            "mode",
            "max_pixels",
            "fetch",
            "jpeg_draft",
        ):
            if data.get(key) is not None:
                kwargs[key] = data[key]
        return cls(**kwargs)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], **overrides: Any) -> ImageProcessor:
        """From a checkpoint directory's preprocessor_config.json (or that file's path)."""
        path = Path(directory)
        if path.is_dir():
            path = path / CONFIG_NAME
        try:
            config = json.loads(path.read_text())
        except FileNotFoundError:
            raise ProcessorConfigError(
                f"{path}: no such file; a Hugging Face checkpoint directory holds {CONFIG_NAME} "
                "(use ImageProcessor.for_config(vit_config) for the ViT defaults)"
            ) from None
        except (OSError, ValueError) as error:
            raise ProcessorConfigError(f"{path}: not a readable JSON file ({error})") from None
        return cls.from_dict(config, **overrides)

    @classmethod
    def for_config(cls, config: SizedConfig, **overrides: Any) -> ImageProcessor:
        """HF ViT defaults (bilinear resize to the model's size, mean = std = 0.5)."""
        height, width = config.image_hw
        return cls(size_spec=SizeSpec(height=height, width=width), **overrides)

    def to_dict(self) -> dict[str, Any]:
        """A preprocessor_config.json that transformers' ViTImageProcessor reads as is."""
        data: dict[str, Any] = {
            "image_processor_type": "ViTImageProcessor",
            "do_resize": self.do_resize,
            "size": self.size_spec.to_dict(),
            "resample": self.resample,
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }
        if self.do_center_crop and self.crop_size is not None:
            data["do_center_crop"] = True
            data["crop_size"] = self.crop_size.to_dict()
        if self.do_convert_rgb is not None:
            data["do_convert_rgb"] = self.do_convert_rgb
        return data

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        target = path / CONFIG_NAME
        target.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return target

    # ---- what comes out ---------------------------------------------------------------------
    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of every output image."""
        spec = self.crop_size if self.do_center_crop and self.crop_size else self.size_spec
        if not self.do_resize and not self.do_center_crop:
            raise VitkitError("do_resize and do_center_crop are off: output size = input size")
        if not spec.is_fixed:
            raise VitkitError(
                f"size {spec.to_dict()} keeps each image's aspect ratio, so the output size "
                "depends on the image; set crop_size/do_center_crop for a fixed size"
            )
        assert spec.height is not None and spec.width is not None
        return (spec.height, spec.width)

    @property
    def background(self) -> tuple[int, int, int] | None:
        return vio.WHITE if self.do_convert_rgb else None

    def describe(self) -> str:
        """One line for logs and `vitkit info`."""
        parts = [f"resize {self.size_spec.to_dict()} {_RESAMPLE_NAMES[self.resample]}"]
        if self.do_center_crop and self.crop_size:
            parts.append(f"crop {self.crop_size.to_dict()}")
        if self.do_rescale:
            parts.append(f"rescale {self.rescale_factor:.6g}")
        if self.do_normalize:
            parts.append(f"mean {list(self.image_mean)} std {list(self.image_std)}")
        return f"{self.mode} mode: " + ", ".join(parts)

    # ---- running it ---------------------------------------------------------------------------
    def __call__(self, images: Any, mode: str | None = None, *, workers: int = 0) -> torch.Tensor:
        """One image or a list of them (ImageLike: path, URL, bytes, PIL, ndarray, tensor).

        Raises the first input's ``ImageDecodeError`` (naming it); see ``load_batch`` to carry on
        past bad inputs. ``workers`` > 1 decodes in that many threads.
        """
        sources = _as_list(images)
        mode = _check_mode(mode or self.mode)
        prepare = self._prepare_fast if mode == "fast" else self._prepare_pil
        return self._assemble(_map(prepare, sources, workers), mode)

    def from_uint8(self, batch: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Already-decoded uint8 images, (B, 3, H, W) or a list of (3, H, W), fast mode.

        Runs on the tensors' device (all on one), so a CUDA batch is resized and normalised on
        the GPU with the same torchvision calls (transformers' ViTImageProcessor(device=...)).
        """
        if isinstance(batch, torch.Tensor) and batch.ndim == 4:
            if batch.dtype != torch.uint8 or batch.shape[1] != 3:
                raise VitkitError(
                    f"from_uint8 wants uint8 (B, 3, H, W), got {batch.dtype} {tuple(batch.shape)}"
                )
            return self._assemble(list(self._resize_crop(batch)), "fast")  # one batched resize
        items = list(batch)
        for item in items:
            if item.dtype != torch.uint8 or item.ndim != 3 or item.shape[0] != 3:
                raise VitkitError(
                    f"from_uint8 wants uint8 (3, H, W) tensors, got {item.dtype} {tuple(item.shape)}"
                )
        return self._assemble([self._resize_crop(item) for item in items], "fast")

    def prepare_uint8(self, source: Any) -> torch.Tensor:
        """Decode, resize and crop one image: (3, H, W) uint8, the fast mode before its float step.

        For data loaders and GPUs: workers hand over small uint8 images (150 KB at 224x224, a
        quarter of the float32 size) and ``normalize`` finishes a stacked batch where it is used.
        """
        return self._prepare_fast(source)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 on any device -> float32 model input (the fast mode's last step)."""
        if batch.dtype != torch.uint8:
            raise VitkitError(f"normalize wants a uint8 batch, got {batch.dtype}")
        return self._rescale_normalize_(batch.to(torch.float32))

    def load_batch(
        self, sources: Sequence[Any], *, workers: int = 0, mode: str | None = None
    ) -> PreparedBatch:
        """Like ``__call__`` over a list, but bad inputs are reported in ``errors`` and skipped."""
        mode = _check_mode(mode or self.mode)
        prepare = self._prepare_fast if mode == "fast" else self._prepare_pil

        def attempt(source: Any) -> Any:
            try:
                return prepare(source)
            except VitkitError as error:
                return error

        results = _map(attempt, list(sources), workers)
        errors = {i: r for i, r in enumerate(results) if isinstance(r, VitkitError)}
        indices = [i for i in range(len(results)) if i not in errors]
        if not indices:
            height, width = self.size
            empty = torch.empty((0, 3, height, width), dtype=torch.float32)
            return PreparedBatch(empty, [], errors)
        pixel_values = self._assemble([results[i] for i in indices], mode)
        return PreparedBatch(pixel_values, indices, errors)

    # ---- the steps ------------------------------------------------------------------------------
    def _io_options(self) -> dict[str, Any]:
        return {"max_pixels": self.max_pixels, "fetch": self.fetch, "background": self.background}

    def _prepare_fast(self, source: Any) -> torch.Tensor:
        """Source -> resized, cropped (3, h, w) uint8."""
        draft = self._draft_size() if self.jpeg_draft else None
        decoded = vio.decode_uint8(source, draft_size=draft, scratch=True, **self._io_options())
        prepared = self._resize_crop(decoded)
        if prepared.untyped_storage().data_ptr() == decoded.untyped_storage().data_ptr():
            prepared = prepared.clone()  # no resize happened: the scratch buffer gets reused
        return prepared

    def _draft_size(self) -> int | None:
        """The side a draft-decoded JPEG must keep (both sides) for the resize that follows."""
        spec = self.size_spec
        if not self.do_resize:
            return None
        if spec.shortest_edge:
            return spec.shortest_edge
        return max(spec.height or 0, spec.width or 0)

    def _resize_crop(self, images: torch.Tensor) -> torch.Tensor:
        if self.do_resize:
            images = fast_mode.resize(images, self.size_spec, self.resample)
        if self.do_center_crop and self.crop_size is not None:
            assert self.crop_size.height is not None and self.crop_size.width is not None
            images = fast_mode.center_crop(images, self.crop_size.height, self.crop_size.width)
        return images

    def _prepare_pil(self, source: Any) -> np.ndarray:
        """Source -> (3, h, w) float32, finished."""
        image = vio.load_image(source, **self._io_options())
        if self.do_resize:
            pixels = pil_mode.resize(image, self.size_spec, self.resample)
        else:
            pixels = np.asarray(image)
        if self.do_center_crop and self.crop_size is not None:
            assert self.crop_size.height is not None and self.crop_size.width is not None
            pixels = pil_mode.center_crop(pixels, self.crop_size.height, self.crop_size.width)
        return pil_mode.rescale_normalize(
            pixels,
            do_rescale=self.do_rescale,
            rescale_factor=self.rescale_factor,
            do_normalize=self.do_normalize,
            mean=self.image_mean,
            std=self.image_std,
        )

    def _assemble(self, items: list[Any], mode: str) -> torch.Tensor:
        """Stack per-image results into one preallocated float32 batch (fast: then normalize)."""
        if not items:
            raise VitkitError("no images given")
        shapes = {tuple(item.shape) for item in items}
        if len(shapes) > 1:
            raise VitkitError(
                f"images came out in different sizes {sorted(shapes)}: this processor's size "
                f"{self.size_spec.to_dict()} keeps aspect ratios; add a center crop to batch them"
            )
        first = items[0]
        device = first.device if isinstance(first, torch.Tensor) else torch.device("cpu")
        # from_uint8 on CUDA tensors stays on the GPU: resize and normalize run there.
        out = torch.empty((len(items), *first.shape), dtype=torch.float32, device=device)
        for row, item in zip(out, items, strict=True):
            row.copy_(torch.from_numpy(item) if isinstance(item, np.ndarray) else item)
        return self._rescale_normalize_(out) if mode == "fast" else out

    def _rescale_normalize_(self, batch: torch.Tensor) -> torch.Tensor:
        return fast_mode.rescale_normalize_(
            batch,
            do_rescale=self.do_rescale,
            rescale_factor=self.rescale_factor,
            do_normalize=self.do_normalize,
            mean=self.image_mean,
            std=self.image_std,
        )


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise VitkitError(f"unknown preprocessing mode {mode!r}: use one of {', '.join(MODES)}")
    return mode


def _as_list(images: Any) -> list[Any]:
    """One ImageLike or a sequence of them -> list; a 4-D array/tensor is a batch."""
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4:
        return list(images)
    return [images]


def _map(function: Callable[[Any], _T], items: list[Any], workers: int) -> list[_T]:
    """map, in ``workers`` threads when > 1 (decoding and resizing release the GIL)."""
    if workers <= 1 or len(items) <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(function, items))
