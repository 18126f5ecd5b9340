"""Whole-slide images: tile-level predictions and embeddings over gigapixel slides.

    import vitkit
    from vitkit.slides import SlideSettings, run_slide

    classifier = vitkit.load("runs/vit384/best")
    result = run_slide("slide.svs", classifier, "out/slide", SlideSettings(mpp=0.5))
    result.summary["classes"]        # share of tissue per class

The flow: a reader (``readers``: OpenSlide, tifffile, Pillow) -> the level and tile size
(``geometry``) -> a tissue mask on a thumbnail (``tissue``) -> the tissue tiles (``tiler``) ->
tiles read ahead in threads (``stream``) -> the classifier's batched forward -> results saved
shard by shard (``workdir``, for resuming) -> tables, GeoJSON, heatmaps (``outputs``).
``runner`` ties them together; ``vitkit slide`` is its command line.
"""

# The names below load on first use (PEP 562): ``vitkit.slides.settings`` is read by
# ``vitkit --help``, which must not import torch through this package.
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_PUBLIC = {
    "READERS": "vitkit.slides.settings",
    "SlideSettings": "vitkit.slides.settings",
    "TileGeometry": "vitkit.slides.geometry",
    "choose_geometry": "vitkit.slides.geometry",
    "SlideReader": "vitkit.slides.readers",
    "open_slide": "vitkit.slides.readers",
    "SlideJob": "vitkit.slides.runner",
    "SlideResult": "vitkit.slides.runner",
    "plan_slide": "vitkit.slides.runner",
    "prepare_slide": "vitkit.slides.runner",
    "run_slide": "vitkit.slides.runner",
    "slide_folder": "vitkit.slides.runner",
    "SlidePlan": "vitkit.slides.tiler",
}

__all__ = [
    "READERS",
    "SlideJob",
    "SlidePlan",
    "SlideReader",
    "SlideResult",
    "SlideSettings",
    "TileGeometry",
    "choose_geometry",
    "open_slide",
    "plan_slide",
    "prepare_slide",
    "run_slide",
    "slide_folder",
]

if TYPE_CHECKING:
    from vitkit.slides.geometry import TileGeometry, choose_geometry
    from vitkit.slides.readers import SlideReader, open_slide
    from vitkit.slides.runner import (
        SlideJob,
        SlideResult,
        plan_slide,
        prepare_slide,
        run_slide,
        slide_folder,
    )
    from vitkit.slides.settings import READERS, SlideSettings
    from vitkit.slides.tiler import SlidePlan


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'vitkit.slides' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
