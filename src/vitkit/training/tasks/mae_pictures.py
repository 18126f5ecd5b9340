"""Reconstruction pictures for MAE pre-training: one PNG per epoch, so a user sees that it learns
(``ReconstructionPictures``, a trainer callback).

Each row is one validation image (always the same images and the same mask, so epochs compare):

    original | masked (dropped patches grey) | reconstruction (predicted dropped patches,
                                                seen patches pasted back, as the MAE paper shows)

Small images are enlarged with nearest-neighbour sampling so every patch stays a sharp square.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from vitkit.atomic_files import atomic_write_bytes
from vitkit.models.mae import MAE
from vitkit.training.callbacks import Callback
from vitkit.training.evaluate import EvalResult
from vitkit.training.run import Run
from vitkit.training.state import FitState
from vitkit.training.tasks.mae_data import MaskedImages

COLUMNS = ("original", "masked", "reconstruction")
_MIN_TILE = 96  # pixels: below this a 4-pixel patch is hard to see
_GAP = 4
_HEADER = 16
_GREY = 0.5


def to_uint8(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised (B, C, H, W) -> (B, H, W, 3) uint8, undoing ``(x - mean) / std``."""
    mean_t = torch.tensor(list(mean), dtype=pixels.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(list(std), dtype=pixels.dtype).view(1, -1, 1, 1)
    unit = (pixels.detach().cpu() * std_t + mean_t).clamp(0, 1)
    if unit.shape[1] == 1:
        unit = unit.expand(-1, 3, -1, -1)
    return (unit.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def patch_mask_image(mask: torch.Tensor, grid: int, patch: int) -> torch.Tensor:
    """(B, N) patch mask (1 = dropped) -> (B, 1, H, W) pixel mask."""
    cells = mask.detach().cpu().float().reshape(-1, 1, grid, grid)
    return cells.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)


def reconstruction_grid(
    pixels: torch.Tensor,
    reconstructed: torch.Tensor,
    mask: torch.Tensor,
    patch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> Image.Image:
    """The picture described in the module docstring for a batch of normalised images."""
    grid = pixels.shape[-1] // patch_size
    hidden = patch_mask_image(mask, grid, patch_size)
    pixels, reconstructed = pixels.detach().cpu(), reconstructed.detach().cpu()
    grey = torch.tensor([(_GREY - m) / s for m, s in zip(mean, std, strict=True)]).view(1, -1, 1, 1)
    masked = pixels * (1 - hidden) + grey * hidden
    pasted = pixels * (1 - hidden) + reconstructed * hidden
    columns = [to_uint8(images, mean, std) for images in (pixels, masked, pasted)]
    return _tile(columns)


def _tile(columns: list[np.ndarray]) -> Image.Image:
    count, height, width = columns[0].shape[:3]
    scale = max(1, -(-_MIN_TILE // max(height, width)))
    tile_h, tile_w = height * scale, width * scale
    canvas = Image.new(
        "RGB",
        (len(columns) * (tile_w + _GAP) + _GAP, _HEADER + count * (tile_h + _GAP) + _GAP),
        "white",
    )
    draw = ImageDraw.Draw(canvas)
    for col, (title, images) in enumerate(zip(COLUMNS, columns, strict=True)):
        left = _GAP + col * (tile_w + _GAP)
        draw.text((left, 2), title, fill="black")
        for row in range(count):
            tile = Image.fromarray(images[row]).resize((tile_w, tile_h), Image.Resampling.NEAREST)
            canvas.paste(tile, (left, _HEADER + row * (tile_h + _GAP)))
    return canvas


def save_png(picture: Image.Image, path: Path) -> None:
    """Write ``picture`` as a PNG atomically (a crash never leaves half a file)."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


class ReconstructionPictures(Callback):
    """After every epoch, ``OUT/reconstructions/epoch_NNN.png`` of the first ``count``
    validation images (always the same images and masks), on rank 0."""

    def __init__(self, count: int) -> None:
        self.count = count

    def on_epoch_end(
        self, run: Run, fit: FitState, record: dict[str, Any], val: EvalResult
    ) -> None:
        if self.count <= 0 or not run.info.is_main:
            return
        model, dataset, spec = run.task.model, run.data.val, run.task.spec
        assert isinstance(model, MAE) and isinstance(dataset, MaskedImages)
        items = [dataset[index] for index in range(min(self.count, len(dataset)))]
        pixels = torch.stack([pixels for pixels, _ in items]).to(run.info.device)
        noise = torch.stack([noise for _, noise in items]).to(run.info.device)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            output = model(pixels, noise=noise)
            reconstructed = model.reconstruct(pixels, output.logits.float())
        model.train(was_training)
        picture = reconstruction_grid(
            pixels, reconstructed, output.mask, model.config.encoder.patch_size, spec.mean, spec.std
        )
        folder = run.out / "reconstructions"
        folder.mkdir(exist_ok=True)
        save_png(picture, folder / f"epoch_{record['epoch']:03d}.png")
