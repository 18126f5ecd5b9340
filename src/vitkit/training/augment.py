"""Training augmentation presets, built from ``torchvision.transforms.v2``.

Input: a uint8 image tensor (C, H, W) or a PIL image. Output: float32 (3, S, S), rescaled to
[0, 1] and normalised with the checkpoint's mean/std, ready for the model.

Presets (``--augment``):

- ``none``: Resize(S, S) only.
- ``seed``: exactly Resize(S, S), RandomHorizontalFlip(0.5), RandomVerticalFlip(0.5),
  RandomRotate90(0.5), RandomApply([RandomResizedCrop(S, scale=(0.5, 1.0))], p=0.5). Meant for
  images where orientation carries no meaning (histology, satellite, microscopy).
- ``natural``: RandomResizedCrop(S) + RandomHorizontalFlip(0.5), the usual recipe for photos.
- ``shift``: Resize(S, S), then RandomAffine(degrees=10, translate=(0.125, 0.125),
  scale=(0.9, 1.1)), borders filled with black. No flips and no quarter turns: for small images
  whose orientation carries meaning (digits, letters, clothing on a plain background), where a
  crop would cut the object off. On 16x16 digits that is a shift of up to 2 pixels.

Evaluation never uses these: it runs the checkpoint's own preprocessing (``ImageProcessor``).

Batch mixing (``--mix``, applied by the trainer to each batch after these per-image transforms):

- ``mixup``: each image is blended with another image of the batch, ``lam * a + (1 - lam) * b``
  with ``lam ~ Beta(alpha, alpha)`` drawn per image (Zhang et al., 2018); its label becomes the
  same blend of the two one-hot labels.
- ``cutmix``: a box of area ``1 - lam`` is pasted from another image of the batch (Yun et al.,
  2019); the labels are mixed by the area actually pasted.

Under distillation the teacher labels the mixed image itself, which is the point: mixed images are
new inputs on which the student can learn the teacher's function ("function matching", Beyer et
al., 2022, "Knowledge distillation: A good teacher is patient and consistent").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from vitkit.training.config import AUGMENT_PRESETS, MIX_MODES

__all__ = [
    "AUGMENT_PRESETS",
    "MIX_MODES",
    "RandomRotate90",
    "build_train_transform",
    "check_mix",
    "mix_batch",
]


class RandomRotate90(v2.Transform):
    """With probability ``p``, rotate by k x 90 degrees (counter-clockwise), k uniform in {0,1,2,3}.

    This follows albumentations' ``RandomRotate90`` (the library the ``seed`` recipe was written
    with): its ``factor`` is drawn from {0, 1, 2, 3} once the transform fires, so k = 0 (no turn)
    is one of the four outcomes and an image ends up rotated with probability 0.75 x p. Together
    with the two flips this reaches all 8 orientations of the dihedral group, which is the point
    of the recipe. For non-square images a quarter turn swaps height and width; the presets resize
    to S x S first, so shapes stay fixed.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p

    def forward(self, *inputs: Any) -> Any:
        # Draw the coin and the factor here so they come from torch's global generator, like
        # every other v2 transform (reproducible under torch.manual_seed).
        if torch.rand(1).item() >= self.p:
            return inputs if len(inputs) > 1 else inputs[0]
        return super().forward(*inputs)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"quarter_turns": int(torch.randint(0, 4, (1,)).item())}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.rotate, inpt, angle=90.0 * params["quarter_turns"], expand=True)


def _normalize(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def build_train_transform(
    preset: str,
    size: int | tuple[int, int],
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
) -> v2.Compose:
    """The ``preset`` augmentation pipeline producing normalised float tensors of ``size``."""
    height, width = (size, size) if isinstance(size, int) else size
    to_image = [v2.ToImage(), v2.RGB()]
    if preset == "none":
        geometry: list[v2.Transform] = [v2.Resize((height, width), antialias=True)]
    elif preset == "seed":
        geometry = [
            v2.Resize((height, width), antialias=True),
            v2.RandomHorizontalFlip(0.5),
            v2.RandomVerticalFlip(0.5),
            RandomRotate90(0.5),
            v2.RandomApply(
                [v2.RandomResizedCrop((height, width), scale=(0.5, 1.0), antialias=True)], p=0.5
            ),
        ]
    elif preset == "shift":
        geometry = [
            v2.Resize((height, width), antialias=True),
            v2.RandomAffine(degrees=10.0, translate=(0.125, 0.125), scale=(0.9, 1.1), fill=0),
        ]
    elif preset == "natural":
        geometry = [
            v2.RandomResizedCrop((height, width), antialias=True),
            v2.RandomHorizontalFlip(0.5),
        ]
    else:
        raise ValueError(f"unknown augmentation preset {preset!r}: choose one of {AUGMENT_PRESETS}")
    return v2.Compose([*to_image, *geometry, *_normalize(mean, std)])


def mix_batch(
    images: torch.Tensor,
    targets: torch.Tensor,
    num_classes: int,
    mode: str,
    alpha: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mixed images, soft targets (N, num_classes)) for ``mode`` mixup or cutmix.

    Partners are a random permutation of the batch and ``lam ~ Beta(alpha, alpha)``; all draws
    come from torch's global generator (reproducible under ``torch.manual_seed``, and saved in the
    trainer's checkpoint for ``--resume``). ``targets`` may be class indices or already soft.
    """
    check_mix(mode, alpha)
    soft = (
        targets.float()
        if targets.is_floating_point()
        else torch.nn.functional.one_hot(targets, num_classes).float()
    )
    if mode == "none" or images.shape[0] < 2:
        return images, soft
    batch = images.shape[0]
    partner = torch.randperm(batch, device=images.device)
    beta = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha)))
    if mode == "mixup":
        weights = beta.sample((batch,)).to(images.device)
        mixed = _blend(images, images[partner], weights.to(images.dtype))
        return mixed, _blend(soft, soft[partner], weights)
    # cutmix: one box for the batch, its side lengths sqrt(1 - lam) of the image's
    height, width = images.shape[-2:]
    side = math.sqrt(1.0 - float(beta.sample()))
    cut_h, cut_w = round(height * side), round(width * side)
    centre_y = int(torch.randint(0, height, (1,)).item())
    centre_x = int(torch.randint(0, width, (1,)).item())
    top, bottom = max(0, centre_y - cut_h // 2), min(height, centre_y + cut_h - cut_h // 2)
    left, right = max(0, centre_x - cut_w // 2), min(width, centre_x + cut_w - cut_w // 2)
    mixed = images.clone()
    mixed[..., top:bottom, left:right] = images[partner][..., top:bottom, left:right]
    kept = 1.0 - (bottom - top) * (right - left) / (height * width)
    return mixed, kept * soft + (1.0 - kept) * soft[partner]


def check_mix(mode: str, alpha: float) -> None:
    """ValueError unless ``mode`` is one of MIX_MODES and ``alpha`` > 0."""
    if mode not in MIX_MODES:
        raise ValueError(f"unknown mix mode {mode!r}: choose one of {', '.join(MIX_MODES)}")
    if alpha <= 0:
        raise ValueError(f"mix alpha must be > 0, got {alpha:g}")


def _blend(first: torch.Tensor, second: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``lam * first + (1 - lam) * second`` with one ``lam`` per row."""
    weight = lam.view(-1, *([1] * (first.ndim - 1)))
    return weight * first + (1 - weight) * second
