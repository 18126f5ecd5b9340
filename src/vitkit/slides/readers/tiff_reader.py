"""Plain, OME and pyramidal TIFF through tifffile, one stored tile (or strip) at a time.

tifffile parses the file's structure (pages, pyramid levels, SubIFDs, OME-XML); the pixels of a
region come from the tiles it touches only: their bytes are read with ``os.pread`` (one shared
descriptor, safe from several threads at once), decoded by tifffile's own codec for the page
(deflate, zstd, LZMA, PackBits and, with ``imagecodecs`` installed, everything else) or, for
JPEG without ``imagecodecs``, by libjpeg-turbo through simplejpeg (the decoder OpenSlide and
Pillow also use: the same pixels). Decoded tiles are kept in a small LRU cache, since
neighbouring regions share them.
"""

from __future__ import annotations

import os
import re
import struct
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from vitkit.errors import SlideFormatError, SlideReadError
from vitkit.slides.readers.base import Level, SlideReader, as_rgb, overlap, white_canvas

JPEG = 7
DEFAULT_CACHE_BYTES = 64 << 20  # two rows of 256-px tiles across a 40k-px level, and more
_MPP_IN_DESCRIPTION = re.compile(r"\bMPP\s*=\s*([0-9.]+)")  # Aperio ImageDescription
_OME_PHYSICAL_SIZE = re.compile(r'PhysicalSizeX="([0-9.eE+-]+)"')
_OME_UNIT = re.compile(r'PhysicalSizeXUnit="([^"]+)"')
_MICRONS_PER_UNIT = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


class TiffReader(SlideReader):
    name = "tifffile"

    def __init__(self, path: Path, *, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        try:
            import tifffile  # optional dependency (the `slides` extra)
        except ImportError:
            raise SlideFormatError(
                f"{path}: reading TIFF slides needs tifffile: pip install 'vitkit[slides]'"
            ) from None
        try:
            self._tiff = tifffile.TiffFile(path)
            pages = _level_pages(self._tiff, path)
        except (tifffile.TiffFileError, ValueError, IndexError, struct.error) as error:
            raise SlideReadError(f"{path}: not a readable TIFF ({error})") from None
        for page in pages:
            _check_page(page, path)
        self._pages = pages
        self._fd = os.open(path, os.O_RDONLY)
        _check_complete(pages, os.fstat(self._fd).st_size, path)
        width0 = pages[0].imagewidth
        height0 = pages[0].imagelength
        levels = [
            Level(p.imagewidth, p.imagelength, _downsample(width0, height0, p)) for p in pages
        ]
        vendor = "ome-tiff" if self._tiff.is_ome else ("aperio" if self._tiff.is_svs else "tiff")
        super().__init__(path, levels, _mpp(self._tiff, pages[0]), vendor)
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_bytes = 0
        self._cache_limit = cache_bytes
        self._lock = threading.Lock()

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        page = self._pages[level]
        out = white_canvas(width, height)
        x0, x1 = overlap(x, width, page.imagewidth)
        y0, y1 = overlap(y, height, page.imagelength)
        if x0 >= x1 or y0 >= y1:
            return out
        chunk_h, chunk_w = page.chunks[0], page.chunks[1]
        across = page.chunked[1]
        for row in range(y0 // chunk_h, (y1 - 1) // chunk_h + 1):
            for col in range(x0 // chunk_w, (x1 - 1) // chunk_w + 1):
                chunk = self._chunk(level, row * across + col)
                top, left = row * chunk_h, col * chunk_w
                cy0, cy1 = max(y0, top), min(y1, top + chunk.shape[0])
                cx0, cx1 = max(x0, left), min(x1, left + chunk.shape[1])
                out[cy0 - y : cy1 - y, cx0 - x : cx1 - x] = chunk[
                    cy0 - top : cy1 - top, cx0 - left : cx1 - left
                ]
        return out

    def close(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None  # type: ignore[assignment]
        if getattr(self, "_tiff", None) is not None:
            self._tiff.close()

    # ---- stored tiles ---------------------------------------------------------------------------
    def _chunk(self, level: int, index: int) -> np.ndarray:
        key = (level, index)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        chunk = self._decode(self._pages[level], index)
        with self._lock:
            self._cache[key] = chunk
            self._cache_bytes += chunk.nbytes
            while self._cache_bytes > self._cache_limit and len(self._cache) > 1:
                _, dropped = self._cache.popitem(last=False)
                self._cache_bytes -= dropped.nbytes
        return chunk

    def _decode(self, page: Any, index: int) -> np.ndarray:
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        shape = (page.chunks[0], page.chunks[1])
        if count == 0:  # a tile the writer left out: nothing was scanned there
            return white_canvas(shape[1], shape[0])
        data = os.pread(self._fd, count, offset)
        where = f"{self.path}: tile {index} of level {self._pages.index(page)}"
        if len(data) != count:
            raise SlideReadError(f"{where} is cut short: the file is truncated")
        try:
            if page.compression == JPEG and not _has_imagecodecs():
                pixels = _decode_jpeg(data, page.jpegtables)
            else:
                pixels = page.decode(data, index, jpegtables=page.jpegtables)[0]
        except (KeyError, AttributeError, NotImplementedError) as error:
            raise SlideFormatError(
                f"{self.path}: tifffile cannot decode {page.compression.name} tiles here "
                f"({error}); pip install imagecodecs, or read it with --reader openslide"
            ) from None
        except Exception as error:  # codecs raise their own classes for corrupt data
            raise SlideReadError(f"{where} is corrupt ({error})") from None
        pixels = np.asarray(pixels).reshape(-1, *np.shape(pixels)[-3:])[0]
        return np.ascontiguousarray(as_rgb(pixels))


def _level_pages(tiff: Any, path: Path) -> list[Any]:
    """The keyframe page of each pyramid level of the first image series, largest first."""
    if not tiff.series:
        raise SlideFormatError(f"{path}: a TIFF without any image in it")
    series = tiff.series[0]
    pages = [level.keyframe for level in series.levels]
    for page, level in zip(pages, series.levels, strict=True):
        if len(level.pages) != 1:
            raise SlideFormatError(
                f"{path}: level {page.imagewidth}x{page.imagelength} holds {len(level.pages)} "
                "planes (channels, z or time); vitkit reads brightfield RGB slides: one RGB "
                "(or grey) plane per level"
            )
    return pages


def _check_page(page: Any, path: Path) -> None:
    if page.dtype != np.uint8:
        raise SlideFormatError(
            f"{path}: {page.dtype} pixels; vitkit reads 8-bit RGB or grey brightfield slides"
        )
    if page.samplesperpixel not in (1, 3, 4) or (
        page.samplesperpixel > 1 and page.planarconfig != 1
    ):
        raise SlideFormatError(
            f"{path}: {page.samplesperpixel} samples per pixel, planar configuration "
            f"{page.planarconfig}; vitkit reads interleaved RGB(A) or grey TIFFs"
        )


def _check_complete(pages: list[Any], file_size: int, path: Path) -> None:
    """Refuse a file cut short up front, not after hours of tiles."""
    for index, page in enumerate(pages):
        ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts, strict=True) if c]
        if ends and max(ends) > file_size:
            raise SlideReadError(
                f"{path}: truncated: level {index}'s tile data runs to byte {max(ends):,} but "
                f"the file has {file_size:,} bytes (copy it again)"
            )


def _downsample(width0: int, height0: int, page: Any) -> float:
    # As OpenSlide: the mean of the two axes' ratios.
    return (width0 / page.imagewidth + height0 / page.imagelength) / 2


def _mpp(tiff: Any, page: Any) -> float | None:
    """Microns per pixel from Aperio's description, OME-XML, or the resolution tags (cm)."""
    description = page.description or ""
    match = _MPP_IN_DESCRIPTION.search(description)
    if match:
        return float(match.group(1))
    if tiff.is_ome:
        ome = tiff.ome_metadata or ""
        size = _OME_PHYSICAL_SIZE.search(ome)
        if size:
            unit = _OME_UNIT.search(ome)
            return float(size.group(1)) * _MICRONS_PER_UNIT.get(unit.group(1) if unit else "µm", 1)
    return _mpp_from_resolution(page)


def _mpp_from_resolution(page: Any) -> float | None:
    # Only centimetres: an inch resolution is nearly always a default (72 or 300 dpi), not a
    # scanner's calibration (OpenSlide's generic TIFF reader decides the same way).
    unit = page.tags.get("ResolutionUnit")
    resolution = page.tags.get("XResolution")
    if unit is None or resolution is None or int(unit.value) != 3:
        return None
    numerator, denominator = resolution.value
    if not numerator or not denominator:
        return None
    return 1e4 / (numerator / denominator)


def _has_imagecodecs() -> bool:
    try:
        import imagecodecs  # noqa: F401  (optional: tifffile's full codec set)
    except ImportError:
        return False
    return True


def _decode_jpeg(data: bytes, tables: bytes | None) -> np.ndarray:
    """A JPEG tile, merged with the page's shared tables (JPEGTables) when it has them."""
    import simplejpeg

    if tables and len(tables) > 4:
        data = tables[:-2] + data[2:]  # tables' SOI..(no EOI) + the tile after its SOI
    return simplejpeg.decode_jpeg(data, colorspace="RGB")
