"""How slides are tiled and run (``SlideSettings``) and what ``vitkit slide`` runs them on
(``SlideBatch``): torch-free, the one source of ``vitkit slide``'s options."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vitkit.errors import SlideError, UsageError
from vitkit.options import option

READERS = ("auto", "openslide", "tifffile", "pillow")
DEFAULT_THUMBNAIL_SIDE = 2048  # the tissue mask's thumbnail: its longer side, in pixels
POOLS = ("cls", "mean", "cls+mean", "pooler")


@dataclass(frozen=True)
class SlideSettings:
    """How a slide is tiled and run. Tile size and stride are in pixels at the resolution read
    (``level``, or ``mpp`` microns per pixel); the tile size defaults to the model's input."""

    level: int | None = option(
        None, "pyramid level to read (0: full resolution)", group="tiles", default_help="0"
    )
    mpp: float | None = option(
        None,
        "microns per pixel to run at, e.g. 0.5 (20x); needs the slide's own in its metadata",
        group="tiles",
    )
    tile_size: int | None = option(
        None, "tile side in pixels", group="tiles", default_help="the model's input"
    )
    stride: int | None = option(
        None, "step between tiles", group="tiles", default_help="the tile size"
    )
    min_tissue: float = option(
        0.5, "fraction of a tile that must be tissue for it to run (0: all)", group="tiles"
    )
    batch_size: int = option(32, "tiles per forward", group="tiles", flags=("--batch-size", "-b"))
    workers: int = option(
        2,
        "tile-reading threads; with --engine ray: Ray workers, each a model (reading in "
        "--cpus-per-worker threads)",
        group="tiles",
    )
    prefetch: int | None = option(
        None, "batches read ahead", group="tiles", default_help="2 per worker", cli=False
    )
    embed: bool = option(False, "also write tile embeddings", group="outputs")
    pool: str | None = option(
        None,
        "embedding of a tile: cls, mean (of the patch tokens, or of a CNN's feature map: a "
        "ResNet's default), cls+mean (both: Virchow's), pooler (transformers' pooler_output)",
        group="outputs",
        choices=POOLS,
        default_help="the model family's, see `vitkit info`",
    )
    mask_level: int | None = option(
        None,
        "segmentation models: the pyramid level the stitched slide mask is drawn at (its "
        "pixels are that level's; areas in µm² from the slide's mpp)",
        group="outputs",
        default_help="the first level at least 4x coarser than the tiles', else the coarsest",
    )
    reader: str = option("auto", "slide reader", group="tiles", choices=READERS)
    thumbnail_side: int = option(
        DEFAULT_THUMBNAIL_SIDE, "longer side of the thumbnail", group="outputs", cli=False
    )
    shard_tiles: int = option(
        512, "tiles per results file on disk: the most a kill can cost", group="outputs", cli=False
    )

    def check(self) -> None:
        if self.level is not None and self.mpp is not None:
            raise UsageError("--level and --mpp both choose the resolution: give one")
        if self.reader not in READERS:
            raise SlideError(f"unknown reader {self.reader!r}: choose one of {', '.join(READERS)}")
        if not 0 <= self.min_tissue <= 1:
            raise SlideError(f"min_tissue must be in [0, 1] (got {self.min_tissue})")
        if min(self.batch_size, self.workers, self.shard_tiles) < 1:
            raise SlideError("batch_size, workers and shard_tiles must be >= 1")


@dataclass(frozen=True)
class SlideBatch:
    """The slides of one ``vitkit slide`` run and where their folders go."""

    slides: list[str] = option(help="slide files", group="slides", flags=("slides",))
    out: Path = option(
        help="output folder: one sub-folder per slide", group="slides", flags=("--out", "-o")
    )
    progress: bool = option(True, "progress bars", group="slides", flags=("--no-progress",))

    @property
    def paths(self) -> list[Path]:
        return [Path(slide) for slide in self.slides]
