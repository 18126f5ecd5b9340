"""What a segmentation run adds to a training run's settings (``vitkit train`` on images/ +
masks/): the head, the loss terms, layer-wise learning-rate decay. Torch-free, as every
settings dataclass (``vitkit train --help`` reads it at start-up).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vitkit.options import option

SEGMENTATION_HEADS = ("dpt", "linear")  # = vitkit.models.segmentation.HEADS (tests check)


@dataclass
class SegmentationSettings:
    seg_head: str = option(
        "dpt",
        "segmentation head: dpt (DPT decoder on four blocks) or linear (DINOv2's linear "
        "protocol: BatchNorm + 1x1 conv on patch tokens)",
        group="segmentation",
        choices=SEGMENTATION_HEADS,
    )
    linear_layers: int = option(
        1,
        "linear head: concatenate the patch tokens of the last N blocks (DINOv2's multi-layer "
        "protocol uses 4)",
        group="segmentation",
    )
    dice_weight: float = option(
        0.0, "weight of a soft Dice term added to the cross-entropy (0 = off)", group="segmentation"
    )
    class_weights: list[str] = option(
        help="cross-entropy weight per class, in class order, comma-separated (e.g. 0.2,1,3); "
        "--balance weighted-loss computes inverse pixel frequencies instead",
        group="segmentation",
        default_factory=list,
        default_help="none: every class 1",
    )
    layer_decay: float = option(
        1.0,
        "layer-wise learning-rate decay: block i of L learns at lr x decay^(L - i), the "
        "embeddings at decay^(L + 1), the head at lr (1 = off; BEiT/MAE fine-tune with 0.65-0.75)",
        group="segmentation",
    )

    def __post_init__(self) -> None:
        if self.seg_head not in SEGMENTATION_HEADS:
            raise ValueError(
                f"--seg-head {self.seg_head}: choose one of {', '.join(SEGMENTATION_HEADS)}"
            )
        if self.linear_layers < 1:
            raise ValueError(f"--linear-layers {self.linear_layers}: give 1 or more")
        if self.dice_weight < 0:
            raise ValueError(f"--dice-weight {self.dice_weight}: give 0 or more")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"--layer-decay {self.layer_decay}: give a value in (0, 1]")
        self.class_weights = [str(w) for w in self.class_weights]
        try:
            weights = [float(w) for w in self.class_weights]
        except ValueError:
            raise ValueError(
                f"--class-weights {','.join(self.class_weights)}: give numbers, e.g. 0.2,1,3"
            ) from None
        if any(w < 0 for w in weights):
            raise ValueError("--class-weights: weights must be 0 or more")

    @property
    def weights(self) -> list[float]:
        return [float(w) for w in self.class_weights]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
