"""A segmentation model as ``vitkit.slides.runner`` runs it: per tile, class probability maps
on the slide mask's grid (stitched at the end, ``vitkit.slides.seg_outputs``), and the tile's
share of each class (what the tile tables and heatmaps show for a classifier's probabilities).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vitkit.inference.segmentation import SegmentationRunner


@dataclass(frozen=True)
class PixelHead:
    """What the slide outputs record of a per-pixel head (a classifier's: its problem type)."""

    problem_type: str = "semantic_segmentation"
    thresholds: tuple[float, ...] | None = None


class SegmentationTiles:
    """``SegmentationRunner`` with the classifier's face the slide runner reads."""

    has_head = True
    head = PixelHead()
    tta = "none"
    precision = "fp32"
    processor_mode = None
    dense = True

    def __init__(self, runner: SegmentationRunner, name: str) -> None:
        self.runner = runner
        self.name = name
        self.model = runner.model
        self.processor = runner.processor
        self.labels = runner.labels
        self.device = runner.device
        self.default_pool = runner.model.capabilities.default_pool

    def tile_arrays(self, pixels: torch.Tensor, map_side: int) -> dict[str, np.ndarray]:
        """ "maps": (N, classes, side, side) float16 softmax on the mask grid; "probabilities":
        (N, classes) their means, the tile's share of each class."""
        maps = self.runner.probabilities(pixels, (map_side, map_side))
        return {
            "probabilities": maps.mean(dim=(2, 3)).cpu().numpy(),
            "maps": maps.to(torch.float16).cpu().numpy(),
        }

    def embed_tensor(self, pixels: torch.Tensor, pool: str | None) -> Any:
        with torch.inference_mode():
            return self.model.forward_embedding(pixels.to(self.device), pool)
