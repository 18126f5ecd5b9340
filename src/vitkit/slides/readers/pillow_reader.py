"""An ordinary PNG or JPEG of any size (a scan, a stitched photo), through Pillow.

These formats cannot be read a region at a time, so the image is decoded once, whole, when the
slide opens; regions are then slices of it. Pillow refuses images over about 179 Mpx as
decompression bombs (``Image.MAX_IMAGE_PIXELS``, a process-wide setting that a library must not
change); a slide is expected to be large, so the file's own decoder class is used directly and
vitkit's bound applies instead: ``MAX_PIXELS`` (about 16,384 x 16,384 = 805 MB of RGB), checked
from the header before anything is decoded. Larger images belong in a tiled pyramidal TIFF.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, PngImagePlugin

from vitkit.errors import SlideFormatError, SlideReadError
from vitkit.images.decode import to_rgb
from vitkit.slides.readers.base import Level, SlideReader, overlap, white_canvas

MAX_PIXELS = 1 << 28
_DECODERS = {"PNG": PngImagePlugin.PngImageFile, "JPEG": JpegImagePlugin.JpegImageFile}


def sniff_plain_image(head: bytes) -> str | None:
    """ "PNG" or "JPEG" from a file's first bytes, else None."""
    if head.startswith(b"\x89PNG"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    return None


class PillowReader(SlideReader):
    name = "pillow"

    def __init__(self, path: Path, *, max_pixels: int = MAX_PIXELS) -> None:
        with open(path, "rb") as handle:
            kind = sniff_plain_image(handle.read(8))
        if kind is None:
            raise SlideFormatError(f"{path}: not a PNG or JPEG file")
        decoder = _DECODERS[kind]
        try:
            image = decoder(str(path))
        except (OSError, SyntaxError, ValueError) as error:
            raise SlideReadError(f"{path}: unreadable {kind} header ({error})") from None
        width, height = image.size
        if width * height > max_pixels:
            image.close()
            raise SlideFormatError(
                f"{path}: {width}x{height} = {width * height:,} pixels is over the {max_pixels:,} "
                "that a PNG/JPEG slide may have (it is decoded whole); convert it to a tiled "
                "pyramidal TIFF, e.g. vips tiffsave IN OUT.tif --tile --pyramid --compression jpeg"
            )
        self._pixels = _decode(image, path, kind)
        height, width = self._pixels.shape[:2]  # after the EXIF turn
        super().__init__(path, [Level(width, height, 1.0)], None, kind)

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        image_h, image_w = self._pixels.shape[:2]
        x0, x1 = overlap(x, width, image_w)
        y0, y1 = overlap(y, height, image_h)
        if x == x0 and y == y0 and x1 - x == width and y1 - y == height:
            return self._pixels[y:y1, x:x1].copy()
        out = white_canvas(width, height)
        if x0 < x1 and y0 < y1:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._pixels[y0:y1, x0:x1]
        return out

    def close(self) -> None:
        self._pixels = np.empty((0, 0, 3), dtype=np.uint8)


def _decode(image: Image.Image, path: Path, kind: str) -> np.ndarray:
    try:
        image.load()
        upright = ImageOps.exif_transpose(image) or image
        return np.asarray(to_rgb(upright))
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise SlideReadError(f"{path}: truncated or corrupt {kind} data ({error})") from None
    finally:
        image.close()
