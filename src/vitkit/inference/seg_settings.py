"""What ``vitkit predict`` writes for a segmentation model: ``MaskOutputSettings`` (torch-free).

A segmentation model answers with a mask per image, not a label: the masks (palette PNGs of
class indices), overlays (the image with each class painted in its colour, and a legend) and the
class areas (``areas.json``, ``areas.csv``) go to ``--masks-out``; the printed table (or
``--format json|jsonl|csv``) lists the areas.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vitkit.options import option

GROUP = "segmentation models"


@dataclass(frozen=True)
class MaskOutputSettings:
    masks_out: Path | None = option(
        None,
        "segmentation models: the folder for each input's mask (masks/NAME.png, a palette PNG "
        "of class indices), overlay (overlays/NAME.png) and the class areas (areas.json, "
        "areas.csv)",
        group=GROUP,
        default_help="required with a segmentation model",
        engines=("local",),
        engine_note="Ray jobs classify",
    )
    overlays: bool = option(
        True,
        "overlay pictures (the image, each class painted in its colour, a legend)",
        group=GROUP,
        flags=("--no-overlays",),
        engines=("local",),
        engine_note="Ray jobs classify",
    )
    overlay_alpha: float = option(
        0.5, "opacity of the class colours on the overlays", group=GROUP, engines=("local",)
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlay_alpha <= 1.0:
            raise ValueError(f"--overlay-alpha {self.overlay_alpha}: give a value in [0, 1]")

    @property
    def given(self) -> list[str]:
        """The options set away from their defaults (to refuse them for a classifier)."""
        defaults = MaskOutputSettings()
        flags = {"masks_out": "--masks-out", "overlays": "--no-overlays"}
        flags["overlay_alpha"] = "--overlay-alpha"
        return [
            flag for name, flag in flags.items() if getattr(self, name) != getattr(defaults, name)
        ]
