"""The "fast" mode: transformers 5's default ``ViTImageProcessor`` (``TorchvisionBackend``).

uint8 CHW tensors -> ``torchvision.transforms.v2.functional.resize`` on uint8 (antialias=True, the
reference's default) -> center crop (if configured) -> one float32 pass that rescales and
normalizes with the reference's fused constants (``mean / factor``, ``std / factor``). Same
operations, order and dtypes as the reference, so results are bit-identical to it; the speed comes
from what surrounds them: torchvision/libjpeg-turbo decoding straight to a channels-last uint8
tensor (torch's fastest uint8 resize layout; the reference makes it contiguous first), no
per-image Python dispatch, and the float batch written in place.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torchvision.transforms.v2 import functional as tvF

from vitkit.images.fast_jpeg import rgbx_view
from vitkit.images.processor.sizes import SizeSpec

# PIL resample code -> torchvision mode, as transformers' pil_torch_interpolation_mapping.
_INTERPOLATION = {
    0: tvF.InterpolationMode.NEAREST_EXACT,
    1: tvF.InterpolationMode.LANCZOS,
    2: tvF.InterpolationMode.BILINEAR,
    3: tvF.InterpolationMode.BICUBIC,
    4: tvF.InterpolationMode.BOX,
    5: tvF.InterpolationMode.HAMMING,
}


def resize(images: torch.Tensor, size: SizeSpec, resample: int) -> torch.Tensor:
    """(…, 3, H, W) uint8 -> resized uint8, as ``TorchvisionBackend.resize``.

    A (3, H, W) view into an RGBX buffer (``vitkit.images.fast_jpeg``) is resized with its padding
    channel: torch's SIMD kernel works on 4-byte pixels and would otherwise copy the image into
    a 4-channel buffer first. Channels are resized independently, so RGB comes out the same.
    """
    height, width = size.output_hw(images.shape[-2], images.shape[-1])
    rgbx = rgbx_view(images)
    resized = tvF.resize(
        images if rgbx is None else rgbx,
        [height, width],
        interpolation=_INTERPOLATION[resample],
        antialias=True,
    )
    return resized if rgbx is None else resized[:3]


def center_crop(images: torch.Tensor, crop_height: int, crop_width: int) -> torch.Tensor:
    """``TorchvisionBackend.center_crop``: zero-pad when smaller, then crop the centre."""
    height, width = images.shape[-2:]
    if crop_width > width or crop_height > height:
        padding = [
            (crop_width - width) // 2 if crop_width > width else 0,
            (crop_height - height) // 2 if crop_height > height else 0,
            (crop_width - width + 1) // 2 if crop_width > width else 0,
            (crop_height - height + 1) // 2 if crop_height > height else 0,
        ]
        images = tvF.pad(images, padding, fill=0)
        height, width = images.shape[-2:]
        if (crop_height, crop_width) == (height, width):
            return images
    top = int((height - crop_height) / 2.0)
    left = int((width - crop_width) / 2.0)
    return tvF.crop(images, top, left, crop_height, crop_width)


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
