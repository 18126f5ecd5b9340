"""Test-time augmentation: the mean answer over flips and quarter turns of each image.

For images with no "up" (histology, satellite, microscopy) a model trained with flips and
RandomRotate90 (``--augment seed``) should answer the same for all 8 orientations of an image
(the dihedral group D4); averaging over them removes what is left of the difference. Modes:

- ``none``: the image as is (1 view);
- ``flip``: the image and its left-right mirror (2 views);
- ``rot90``: turns by 0, 90, 180 and 270 degrees (4 views);
- ``d4``: those 4 turns of the image and of its mirror (8 views, every orientation).

The views are made from the preprocessed batch (a quarter turn of the resized, normalised pixels
equals the preprocessing of the turned image, since the resize is the same along both axes), so
all views of all images go through ONE forward pass, and the mean is taken over what the user
reads: probabilities (after softmax or sigmoid, never over logits) or embeddings.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vitkit.errors import TTAError
from vitkit.inference.settings import TTA_MODES

# (quarter turns, mirrored first) of each view, in the order views() stacks them
_VIEWS = {
    "none": [(0, False)],
    "flip": [(0, False), (0, True)],
    "rot90": [(k, False) for k in range(4)],
    "d4": [(k, mirror) for mirror in (False, True) for k in range(4)],
}


def check_mode(mode: str) -> str:
    if mode not in TTA_MODES:
        raise TTAError(f"unknown TTA mode {mode!r}: choose one of {', '.join(TTA_MODES)}")
    return mode


def num_views(mode: str) -> int:
    return len(_VIEWS[check_mode(mode)])


def _turn(quarter_turns: int, mirror: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> x mirrored left-right (if ``mirror``), then turned counter-clockwise."""

    def transform(x: torch.Tensor) -> torch.Tensor:
        x = x.flip(-1) if mirror else x
        return torch.rot90(x, quarter_turns, dims=(-2, -1)) if quarter_turns else x

    return transform


def view_transforms(mode: str) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """The functions that make each view from a (..., H, W) tensor, in the order views() stacks them."""
    return [_turn(k, mirror) for k, mirror in _VIEWS[check_mode(mode)]]


def views(pixel_values: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, C, H, W) -> (V * B, C, H, W): view 0 of every image, then view 1, ..."""
    if mode in ("rot90", "d4") and pixel_values.shape[-2] != pixel_values.shape[-1]:
        height, width = pixel_values.shape[-2:]
        raise TTAError(
            f"--tta {mode} turns images by 90 degrees, which needs a square input; this model "
            f"takes {height}x{width}: use --tta flip"
        )
    if mode == "none":
        return pixel_values
    return torch.cat([transform(pixel_values) for transform in view_transforms(mode)])


def mean_over_views(outputs: torch.Tensor, mode: str) -> torch.Tensor:
    """(V * B, ...) outputs of ``views`` -> (B, ...) mean over the V views of each image."""
    count = num_views(mode)
    if count == 1:
        return outputs
    return outputs.reshape(count, outputs.shape[0] // count, *outputs.shape[1:]).mean(dim=0)


def averaged(
    function: Callable[[torch.Tensor], torch.Tensor], pixel_values: torch.Tensor, mode: str
) -> torch.Tensor:
    """``function`` (one batched call) over every view of every image, averaged per image."""
    return mean_over_views(function(views(pixel_values, mode)), mode)


class AveragedModel(torch.nn.Module):
    """``model`` under TTA, for code that reads logits (an evaluation loop, a loss).

    Its output is the logit of the averaged probabilities: ``log(mean softmax)`` for a softmax
    head (softmax of it gives the mean back exactly: the means sum to 1), ``logit(mean sigmoid)``
    for a sigmoid head. A loss on it is the loss of the averaged answer.
    """

    def __init__(self, model: torch.nn.Module, mode: str, multi_label: bool) -> None:
        super().__init__()
        self.model = model
        self.mode = check_mode(mode)
        self.multi_label = multi_label

    @property
    def config(self) -> object:
        return self.model.config

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        def probabilities(batch: torch.Tensor) -> torch.Tensor:
            output = self.model(batch)
            logits = (output.logits if hasattr(output, "logits") else output).float()
            return logits.sigmoid() if self.multi_label else logits.softmax(dim=-1)

        mean = averaged(probabilities, pixel_values, self.mode)
        tiny = torch.finfo(mean.dtype).tiny
        if self.multi_label:
            # float32 sigmoid saturates at 1.0: keep the logit finite
            mean = mean.clamp(tiny, 1.0 - torch.finfo(mean.dtype).eps / 2)
            return mean.log() - (-mean).log1p()
        return mean.clamp_min(tiny).log()
