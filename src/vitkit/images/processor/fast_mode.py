"""The "fast" mode: transformers 5's default ``ViTImageProcessor`` (``TorchvisionBackend``).

uint8 CHW tensors -> ``torchvision.transforms.v2.functional.resize`` on uint8 (antialias=True, the
reference's default) -> center crop (if configured) -> one float32 pass that rescales and
normalizes with the reference's fused constants (``mean / factor``, ``std / factor``). Same
operations, order and dtypes as the reference, so results are bit-identical to it; the speed comes
from what surrounds them: torchvision/libjpeg-turbo decoding straight to a channels-last uint8
tensor (torch's fastest uint8 resize layout; the reference makes it contiguous first), no
per-image Python dispatch, and the float batch written in place.

The three torchvision functions used (resize, pad, crop) are restated here on the torch calls
they make (torchvision 0.29's ``resize_image``, ``_pad_with_scalar_fill``, ``crop_image``):
importing torchvision imports torch._dynamo, ~2 s of CPU at the start of every command and
server; tests check the results stay equal to torchvision's.
"""

from __future__ import annotations

import platform
from functools import lru_cache

import torch
from torch.nn.functional import interpolate
from torch.nn.functional import pad as torch_pad

from vitkit.images.fast_jpeg import rgbx_view
from vitkit.images.processor.sizes import SizeSpec

# PIL resample code -> torchvision InterpolationMode's value (transformers'
# pil_torch_interpolation_mapping), the mode string torch's interpolate takes.
_INTERPOLATION = {
    0: "nearest-exact",
    1: "lanczos",
    2: "bilinear",
    3: "bicubic",
    4: "box",
    5: "hamming",
}


def resize(images: torch.Tensor, size: SizeSpec, resample: int) -> torch.Tensor:
    """(…, 3, H, W) uint8 -> resized uint8, as ``TorchvisionBackend.resize``.

    A (3, H, W) view into an RGBX buffer (``vitkit.images.fast_jpeg``) is resized with its padding
    channel: torch's SIMD kernel works on 4-byte pixels and would otherwise copy the image into
    a 4-channel buffer first. Channels are resized independently, so RGB comes out the same.
    """
    height, width = size.output_hw(images.shape[-2], images.shape[-1])
    rgbx = rgbx_view(images)
    resized = resize_image(
        images if rgbx is None else rgbx, height, width, _INTERPOLATION[resample]
    )
    return resized if rgbx is None else resized[:3]


def _native_uint8(mode: str) -> bool:
    """Whether torch resizes uint8 directly on this CPU (torchvision's rule: bilinear only on
    AVX2/AVX-512/ARM, where its uint8 kernel is faster; bicubic and lanczos always)."""
    if mode == "bilinear":
        capability = torch.backends.cpu.get_cpu_capability()
        return capability in ("AVX2", "AVX512") or platform.machine() in ("aarch64", "arm64")
    return mode in ("bicubic", "lanczos")


def resize_image(image: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    """torchvision's ``resize_image(image, [height, width], mode, antialias=True)``."""
    align_corners = False if mode in ("bilinear", "bicubic", "lanczos") else None
    antialias = align_corners is not None  # torchvision turns it off for the other modes
    shape = image.shape
    channels, old_height, old_width = shape[-3:]
    if (height, width) == (old_height, old_width):
        return image
    if image.numel() == 0:
        return image.reshape((*shape[:-3], channels, height, width))
    dtype = image.dtype
    acceptable = [torch.float32, torch.float64]
    if mode in ("nearest", "nearest-exact") or (image.device.type == "cpu" and _native_uint8(mode)):
        acceptable.append(torch.uint8)
    image = image.reshape(-1, channels, old_height, old_width)
    strides = image.stride()
    numel = image.numel()
    one_channels_last = image.is_contiguous(memory_format=torch.channels_last) and len(image) == 1
    if one_channels_last and numel != strides[0]:
        # torchvision's restride: makes interpolate allocate a channels-last output for a
        # 1-image batch (pytorch/pytorch#68430) instead of repacking it.
        image = image.as_strided((1, channels, old_height, old_width), (numel, *strides[1:]))
    cast = dtype not in acceptable
    if cast:
        image = image.to(dtype=torch.float32)
    image = interpolate(
        image, size=[height, width], mode=mode, align_corners=align_corners, antialias=antialias
    )
    if cast:
        if mode in ("bicubic", "lanczos") and dtype == torch.uint8:
            image = image.clamp_(min=0, max=255)
        if dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
            image = image.round_()
        image = image.to(dtype=dtype)
    return image.reshape((*shape[:-3], channels, height, width))


def center_crop(images: torch.Tensor, crop_height: int, crop_width: int) -> torch.Tensor:
    """``TorchvisionBackend.center_crop``: zero-pad when smaller, then crop the centre."""
    height, width = images.shape[-2:]
    if crop_width > width or crop_height > height:
        padding = [  # torch's order: left, right, top, bottom
            (crop_width - width) // 2 if crop_width > width else 0,
            (crop_width - width + 1) // 2 if crop_width > width else 0,
            (crop_height - height) // 2 if crop_height > height else 0,
            (crop_height - height + 1) // 2 if crop_height > height else 0,
        ]
        images = _pad_zeros(images, padding)
        height, width = images.shape[-2:]
        if (crop_height, crop_width) == (height, width):
            return images
    top = int((height - crop_height) / 2.0)
    left = int((width - crop_width) / 2.0)
    return images[..., top : top + crop_height, left : left + crop_width]


def _pad_zeros(images: torch.Tensor, padding: list[int]) -> torch.Tensor:
    """torchvision's ``pad_image(images, padding, fill=0)`` (constant mode), padding in torch's
    (left, right, top, bottom) order."""
    shape = images.shape
    channels, height, width = shape[-3:]
    batch = images.reshape(-1, channels, height, width)
    padded = torch_pad(batch, padding, mode="constant", value=0.0)
    return padded.reshape(shape[:-3] + padded.shape[-3:])


@lru_cache(maxsize=16)
def _fused_constants(
    mean: tuple[float, ...],
    std: tuple[float, ...],
    do_rescale: bool,
    rescale_factor: float,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``TorchvisionBackend._fuse_mean_std_and_rescale_factor``, then normalize's (C, 1, 1) view.

    Computed on the CPU as the reference does, then moved (float32 values are copied exactly).
    """
    if do_rescale:
        mean_t = torch.tensor(mean) * (1.0 / rescale_factor)
        std_t = torch.tensor(std) * (1.0 / rescale_factor)
    else:
        mean_t = torch.as_tensor(mean, dtype=torch.float32)
        std_t = torch.as_tensor(std, dtype=torch.float32)
    return mean_t.view(-1, 1, 1).to(device), std_t.view(-1, 1, 1).to(device)


def rescale_normalize_(
    batch: torch.Tensor,
    *,
    do_rescale: bool,
    rescale_factor: float,
    do_normalize: bool,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> torch.Tensor:
    """In place on a float32 batch holding uint8 values (``out[i].copy_(uint8)``)."""
    if do_normalize:
        mean_t, std_t = _fused_constants(mean, std, do_rescale, rescale_factor, batch.device)
        return batch.sub_(mean_t).div_(std_t)
    if do_rescale:
        return batch.mul_(rescale_factor)
    return batch
