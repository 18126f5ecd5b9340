"""DenseProcessor: transformers' ``DPTImageProcessor`` (its default torchvision backend), for
segmentation models, with each image's original size kept for the masks.

    uint8 image -> resize to ``size`` (``keep_aspect_ratio``: the side that changes least decides
    the scale; both sides rounded to ``ensure_multiple_of``) -> rescale and normalise (fused, as
    the reference) -> centre zero-padding to a multiple of ``size_divisor`` (``do_pad``)

Same operations, order and dtypes as the reference (``image_processing_dpt.py``), reusing the
fast mode's resize and normalisation (``vitkit.images.processor.fast_mode``), so the pixel values
are bit-identical to it. A segmentation model's masks go back to the image's own size
(``original_sizes``) the way ``post_process_semantic_segmentation`` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn.functional import pad as torch_pad

from vitkit.errors import ProcessorConfigError, VitkitError
from vitkit.images import decode as vio
from vitkit.images.processor import fast_mode
from vitkit.images.processor.image_processor import _triple

IMAGE_PROCESSOR_TYPE = "DPTImageProcessor"
_RESAMPLE_CODES = (0, 1, 2, 3, 4, 5)


@dataclass
class DenseBatch:
    """Model inputs and the size each image had before preprocessing."""

    pixel_values: torch.Tensor  # (B, 3, H, W) float32
    original_sizes: list[tuple[int, int]]  # (height, width) of each input image


@dataclass
class DenseProcessor:
    """The fields of a ``DPTImageProcessor`` preprocessor_config.json (and its defaults)."""

    size: tuple[int, int] = (384, 384)
    resample: int = 3  # PIL code: bicubic, DPTImageProcessor's default
    keep_aspect_ratio: bool = False
    ensure_multiple_of: int = 1
    do_resize: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    do_pad: bool = False
    size_divisor: int | None = None
    max_pixels: int | None = vio.DEFAULT_MAX_PIXELS
    fetch: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.image_mean = _triple(self.image_mean, "image_mean")
        self.image_std = _triple(self.image_std, "image_std")
        if self.resample not in _RESAMPLE_CODES:
            raise ProcessorConfigError(f"resample={self.resample!r} is not a PIL filter code 0..5")
        if self.do_pad and not self.size_divisor:
            raise ProcessorConfigError("do_pad needs size_divisor (pad to a multiple of it)")
        if self.ensure_multiple_of < 1:
            raise ProcessorConfigError(
                f"ensure_multiple_of must be >= 1, not {self.ensure_multiple_of}"
            )

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, config: dict[str, Any], **overrides: Any) -> DenseProcessor:
        """From preprocessor_config.json contents (a DPTImageProcessor's, or a ViT's, whose
        size/resample/mean/std carry over); unknown keys are ignored."""
        data = {**config, **overrides}
        kwargs: dict[str, Any] = {}
        if data.get("size") is not None:
            kwargs["size"] = _fixed_size(data["size"])
        for key in (
            "resample",
            "keep_aspect_ratio",
            "ensure_multiple_of",
            "do_resize",
            "do_rescale",
            "rescale_factor",
            "do_normalize",
            "image_mean",
            "image_std",
            "do_pad",
            "size_divisor",
            "max_pixels",
            "fetch",
        ):
            if data.get(key) is not None:
                kwargs[key] = data[key]
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """A preprocessor_config.json that transformers' DPTImageProcessor reads as is."""
        height, width = self.size
        return {
            "image_processor_type": IMAGE_PROCESSOR_TYPE,
            "do_resize": self.do_resize,
            "size": {"height": height, "width": width},
            "resample": self.resample,
            "keep_aspect_ratio": self.keep_aspect_ratio,
            "ensure_multiple_of": self.ensure_multiple_of,
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "do_pad": self.do_pad,
            "size_divisor": self.size_divisor,
        }

    def describe(self) -> str:
        height, width = self.size
        aspect = ", aspect kept" if self.keep_aspect_ratio else ""
        pad = f", padded to x{self.size_divisor}" if self.do_pad else ""
        return (
            f"DPT: resize {height}x{width}{aspect} (multiple of {self.ensure_multiple_of}), "
            f"mean {list(self.image_mean)} std {list(self.image_std)}{pad}"
        )

    # ---- running it ---------------------------------------------------------------------
    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """transformers DPT's ``get_resize_output_image_size``."""
        if not self.do_resize:
            return height, width
        out_height, out_width = self.size
        scale_height, scale_width = out_height / height, out_width / width
        if self.keep_aspect_ratio:  # scale as little as possible
            if abs(1 - scale_width) < abs(1 - scale_height):
                scale_height = scale_width
            else:
                scale_width = scale_height
        multiple = self.ensure_multiple_of
        return (
            _constrain_to_multiple(scale_height * height, multiple),
            _constrain_to_multiple(scale_width * width, multiple),
        )

    def prepare_uint8(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) uint8 -> the model's (3, h, w) float32 input."""
        if self.do_resize:
            height, width = self.output_size(image.shape[-2], image.shape[-1])
            mode = fast_mode._INTERPOLATION[self.resample]
            image = fast_mode.resize_image(image, height, width, mode)
        pixels = fast_mode.rescale_normalize_(
            image.to(torch.float32).contiguous(),
            do_rescale=self.do_rescale,
            rescale_factor=self.rescale_factor,
            do_normalize=self.do_normalize,
            mean=self.image_mean,
            std=self.image_std,
        )
        if self.do_pad:
            assert self.size_divisor is not None
            pixels = _centre_pad(pixels, self.size_divisor)
        return pixels

    def prepare_mask(self, mask: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
        """(H, W) uint8 class indices -> (h, w) uint8 on the grid ``prepare_uint8`` gives the
        image: nearest-neighbour resize (classes are not averaged), padding with ``ignore_index``."""
        if self.do_resize:
            height, width = self.output_size(mask.shape[-2], mask.shape[-1])
            mask = fast_mode.resize_image(mask[None, None], height, width, "nearest")[0, 0]
        if self.do_pad:
            assert self.size_divisor is not None
            mask = _centre_pad(mask[None], self.size_divisor, ignore_index)[0]
        return mask

    mode = "fast"  # the one pipeline (the torchvision backend); slides' tile reader asks

    def from_uint8(self, images: list[torch.Tensor]) -> torch.Tensor:
        """(3, H, W) uint8 images (slide tiles) -> the model's (B, 3, h, w) float32 batch."""
        return torch.stack([self.prepare_uint8(image) for image in images])

    def decode(self, source: Any) -> torch.Tensor:
        """Any image source -> (3, H, W) uint8 (``vitkit.images.decode``)."""
        return vio.decode_uint8(source, max_pixels=self.max_pixels, fetch=self.fetch)

    def __call__(self, images: Any) -> DenseBatch:
        """One image or a list of them (path, bytes, PIL, ndarray, uint8 tensor)."""
        sources = images if isinstance(images, list | tuple) else [images]
        prepared, sizes = [], []
        for source in sources:
            decoded = self.decode(source)
            sizes.append((int(decoded.shape[-2]), int(decoded.shape[-1])))
            prepared.append(self.prepare_uint8(decoded))
        shapes = {tuple(p.shape) for p in prepared}
        if len(shapes) > 1:
            raise VitkitError(
                f"images came out in different sizes {sorted(shapes)} (keep_aspect_ratio): "
                "run them one at a time"
            )
        return DenseBatch(torch.stack(prepared), sizes)


def _constrain_to_multiple(value: float, multiple: int) -> int:
    """transformers DPT's ``constrain_to_multiple_of`` (no bounds)."""
    result = round(value / multiple) * multiple
    if result < 0:
        result = math.ceil(value / multiple) * multiple
    return int(result)


def _centre_pad(pixels: torch.Tensor, divisor: int, value: float = 0.0) -> torch.Tensor:
    """Pad with ``value`` (zeros after normalisation, as the reference) to a multiple of
    ``divisor``, split evenly, the odd pixel at the bottom/right."""
    height, width = pixels.shape[-2:]
    pad_height = math.ceil(height / divisor) * divisor - height
    pad_width = math.ceil(width / divisor) * divisor - width
    top, left = pad_height // 2, pad_width // 2
    return torch_pad(pixels, (left, pad_width - left, top, pad_height - top), value=value)


def _fixed_size(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, dict) and "height" in value and "width" in value:
        return (int(value["height"]), int(value["width"]))
    if isinstance(value, list | tuple) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    raise ProcessorConfigError(
        f'DPT preprocessing size {value!r}: give {{"height": H, "width": W}} (or one int)'
    )
