"""Which level to read and how many of its pixels make one tile: from --level or --mpp.

A tile is ``tile_size`` pixels at the resolution asked for. With ``--level L`` that is L's own
resolution. With ``--mpp M`` it is M microns per pixel: the coarsest level at least that fine is
read (within ``MPP_TOLERANCE``: 0.2527 µm/px counts as 0.25), and a region of
``tile_size * M / level_mpp`` of its pixels becomes one tile, resized to the model's input by
the checkpoint's own preprocessing (as WSInfer and TIAToolbox do).
"""

from __future__ import annotations

from dataclasses import dataclass

from vitkit.errors import SlideLevelError
from vitkit.slides.readers.base import SlideReader

MPP_TOLERANCE = 0.02


@dataclass(frozen=True)
class TileGeometry:
    """Tiles of one slide: where they are read and their size there."""

    level: int
    read_size: int  # side of the square region read, in pixels of ``level``
    read_stride: int  # step between tiles, in pixels of ``level``
    downsample: float  # level-0 pixels per pixel of ``level``
    mpp: float | None  # microns per pixel of the tile as read (None: unknown)

    @property
    def level0_size(self) -> int:
        """A tile's side in level-0 pixels (the coordinates of every output)."""
        return round(self.read_size * self.downsample)


def choose_geometry(
    reader: SlideReader,
    *,
    tile_size: int,
    stride: int | None = None,
    level: int | None = None,
    mpp: float | None = None,
) -> TileGeometry:
    """The level and region sizes for ``tile_size``-pixel tiles (``stride`` apart, default: no
    overlap) at ``level`` or ``mpp`` (level 0 when neither is given)."""
    if tile_size < 1 or (stride is not None and stride < 1):
        raise SlideLevelError(f"tile size and stride must be >= 1 (got {tile_size}, {stride})")
    if level is not None and mpp is not None:
        raise SlideLevelError("give a level or an mpp, not both")
    stride = tile_size if stride is None else stride
    if mpp is not None:
        level, scale = _level_for_mpp(reader, mpp)
    else:
        level = 0 if level is None else level
        scale = 1.0
        _check_level(reader, level)
    read_size = max(1, round(tile_size * scale))
    geometry = TileGeometry(
        level=level,
        read_size=read_size,
        read_stride=max(1, round(stride * scale)),
        downsample=reader.levels[level].downsample,
        mpp=mpp if mpp is not None else reader.level_mpp(level),
    )
    _check_fits(reader, geometry)
    return geometry


def _check_level(reader: SlideReader, level: int) -> None:
    if not 0 <= level < len(reader.levels):
        raise SlideLevelError(
            f"{reader.path}: no level {level}; it has {len(reader.levels)} "
            f"({reader.describe_levels()})"
        )


def _level_for_mpp(reader: SlideReader, mpp: float) -> tuple[int, float]:
    """(level, read pixels per tile pixel): the coarsest level at least as fine as ``mpp``."""
    if mpp <= 0:
        raise SlideLevelError(f"--mpp must be positive (got {mpp})")
    if reader.mpp is None:
        raise SlideLevelError(
            f"{reader.path}: its metadata gives no microns per pixel, so --mpp {mpp:g} cannot "
            f"pick a level; choose one with --level (levels {reader.describe_levels()})"
        )
    level_mpps = [reader.mpp * level.downsample for level in reader.levels]
    fine_enough = [i for i, m in enumerate(level_mpps) if m <= mpp * (1 + MPP_TOLERANCE)]
    if not fine_enough:
        raise SlideLevelError(
            f"{reader.path}: its finest level is {level_mpps[0]:.4g} µm/px, coarser than the "
            f"--mpp {mpp:g} asked for (vitkit does not enlarge slides)"
        )
    level = max(fine_enough, key=lambda i: level_mpps[i])
    scale = mpp / level_mpps[level]
    return level, 1.0 if abs(scale - 1) <= MPP_TOLERANCE else scale


def _check_fits(reader: SlideReader, geometry: TileGeometry) -> None:
    size = reader.levels[geometry.level]
    if geometry.read_size > min(size.width, size.height):
        raise SlideLevelError(
            f"{reader.path}: a tile of {geometry.read_size} px does not fit in level "
            f"{geometry.level} ({size.width}x{size.height}); use a finer level or a smaller "
            "--tile-size"
        )
