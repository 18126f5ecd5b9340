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

from vitkit.slides.geometry import TileGeometry, choose_geometry
from vitkit.slides.readers import READERS, SlideReader, open_slide
from vitkit.slides.runner import (
    SlideJob,
    SlideResult,
    SlideSettings,
    plan_slide,
    prepare_slide,
    run_slide,
    slide_folder,
)
from vitkit.slides.tiler import SlidePlan

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
