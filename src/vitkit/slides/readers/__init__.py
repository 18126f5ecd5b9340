"""Slide readers: ``open_slide(path)`` picks one by the file's format.

- ``openslide``: vendor formats (SVS, NDPI, MRXS, SCN, BIF, VMS/VMU, SVSLIDE) and any slide
  OpenSlide recognises that the others do not.
- ``tifffile``: TIFF, OME-TIFF and pyramidal TIFF, tiled or in strips.
- ``pillow``: PNG and JPEG, decoded whole (bounded: see ``pillow_reader.MAX_PIXELS``).

``reader="openslide"`` (or ``tifffile``, ``pillow``) forces one.
"""

from __future__ import annotations

from pathlib import Path

from vitkit.errors import SlideError, SlideFormatError
from vitkit.slides.readers.base import Level, SlideReader
from vitkit.slides.readers.openslide_reader import OpenSlideReader, detect_format
from vitkit.slides.readers.pillow_reader import PillowReader, sniff_plain_image
from vitkit.slides.readers.tiff_reader import TiffReader
from vitkit.slides.settings import READERS

# Vendor formats: OpenSlide knows their layouts (NDPI and SVS are TIFF inside, but with
# vendor offsets and metadata that only OpenSlide interprets fully).
VENDOR_SUFFIXES = frozenset(
    {".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide", ".dcm"}
)
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

__all__ = [
    "READERS",
    "Level",
    "OpenSlideReader",
    "PillowReader",
    "SlideReader",
    "TiffReader",
    "open_slide",
    "pick_reader",
]


def open_slide(path: str | Path, reader: str = "auto") -> SlideReader:
    """Open a slide for reading; the error names the file and what to do about it."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "no such file"
        raise SlideError(f"{path}: {what}")
    name = pick_reader(path) if reader == "auto" else reader
    if name == "openslide":
        return OpenSlideReader(path)
    if name == "tifffile":
        return TiffReader(path)
    if name == "pillow":
        return PillowReader(path)
    raise SlideFormatError(f"unknown reader {reader!r}: choose one of {', '.join(READERS)}")


def pick_reader(path: Path) -> str:
    """The reader ``auto`` uses for this file, by suffix and first bytes."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    if not head:
        raise SlideFormatError(f"{path}: empty file (0 bytes)")
    if path.suffix.lower() in VENDOR_SUFFIXES:
        return "openslide"
    if head.startswith(_TIFF_MAGIC):
        return "tifffile"
    if sniff_plain_image(head):
        return "pillow"
    if detect_format(path):
        return "openslide"
    raise SlideFormatError(
        f"{path}: not a slide format vitkit reads (TIFF/OME-TIFF, PNG, JPEG, or through "
        "OpenSlide: SVS, NDPI, MRXS, SCN, BIF, VMS, SVSLIDE)"
    )
