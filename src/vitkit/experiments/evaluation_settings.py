"""What ``vitkit eval`` / ``vitkit.evaluate`` read and write besides the model: torch-free (the
command's options are generated from these fields)."""

from __future__ import annotations

from dataclasses import dataclass

from vitkit.options import option

BAD_IMAGE_CHOICES = ("skip", "fail")


@dataclass(frozen=True)
class EvalSettings:
    data: str = option(
        help="image folder (one sub-folder per class), or a label table for a multi-label model",
        group="data",
    )
    split: str | None = option(
        None,
        "sub-folder (or DATA/<split>.csv table) to evaluate",
        group="data",
        default_help="test when present, else DATA itself",
    )
    out: str | None = option(
        None,
        "output folder",
        group="data",
        default_help="eval-<split> beside a local model, else ./eval-<split>",
    )
    batch_size: int = option(64, "images per forward", group="data", flags=("--batch-size", "-b"))
    workers: int = option(0, "data-loading processes", group="data")
    on_bad_image: str = option(
        "skip",
        "unreadable images (and bad label-table rows): skip with a report, or stop",
        group="data",
        choices=BAD_IMAGE_CHOICES,
    )
