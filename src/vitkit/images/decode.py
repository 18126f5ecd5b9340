"""Image sources -> RGB pixels, safely: one place that decides what counts as an image.

``load_image`` turns any supported source (path, URL, bytes, file object, PIL image, numpy array,
torch tensor) into an upright RGB ``PIL.Image``; ``decode_uint8`` does the same into a CHW uint8
tensor, decoding JPEGs with libjpeg-turbo (simplejpeg for upright JPEGs, see
``vitkit.images.fast_jpeg``; torchvision for the rest: the fast path) and everything else with PIL.

Rules, the same for both:

- Only common raster formats are opened (``COMMON_RASTER``, phone formats included: HEIC/HEIF
  through pillow-heif, AVIF through Pillow or its plugin); PIL is never asked to try the others
  (EPS/PostScript would run Ghostscript).
- The pixel count is read from the header and checked against ``max_pixels`` BEFORE decoding, so a
  decompression bomb (a small file claiming 30000x30000) costs nothing. With
  ``reduce_oversized=True`` a JPEG above the cap is decoded at the DCT scale (1/2, 1/4 or 1/8)
  that brings it under the cap instead of being refused (libjpeg scales while it decodes, so the
  full-size pixels never exist); ``decoded_scale(image)`` tells the caller. Other formats cannot
  be decoded at a reduced scale and are still refused.
- The whole image is decoded up front, so a truncated file fails here, naming the file
  (``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is left alone).
- EXIF orientation is applied.
- Modes become RGB as transformers' ``load_image`` does (``PIL.Image.convert("RGB")``: alpha is
  dropped, palettes expanded, CMYK converted), with one deliberate difference: 16-bit images
  (``I;16``, ``I;16B``, ``I``) are scaled to 8 bits (``round(v / 257)``), where PIL's conversion
  clips every value above 255 to white. ``background=(r, g, b)`` composites transparent images
  onto a colour instead, exactly as transformers' processors do with ``do_convert_rgb=True``.

Errors are ``vitkit.errors`` classes whose message starts with the source.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vitkit.errors import ImageDecodeError, ImageTooLargeError, UnsupportedImageError
from vitkit.images import fast_jpeg

if TYPE_CHECKING:
    import torch

# PIL's own default cap (Image.MAX_IMAGE_PIXELS): about 9459 x 9459.
DEFAULT_MAX_PIXELS = 89_478_485
# PIL format names; the only ones Image.open is allowed to try. HEIF (HEIC, a phone's default)
# is registered by pillow-heif, AVIF by Pillow itself (11.3+ wheels) or pillow-avif-plugin.
COMMON_RASTER: tuple[str, ...] = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "HEIF", "AVIF")
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"}
    | {".heic", ".heif", ".hif", ".avif"}
)
# JPEG's DCT scaling (libjpeg-turbo decodes at M/8; PIL's draft mode offers these), largest first.
JPEG_REDUCTIONS = (2, 4, 8)
DECODED_SCALE = "vitkit.decoded_scale"  # PIL Image.info key: the scale a reduced decode used
WHITE = (255, 255, 255)

# A fetch policy (vitkit.images.fetch.FetchPolicy) or a callable url -> bytes.
Fetcher = Callable[[str], bytes] | Any
ImageLike = Any  # str | PathLike | bytes | file object | PIL.Image | np.ndarray | torch.Tensor

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# PIL raises these while decoding broken data (OSError covers "image file is truncated").
_DECODE_FAILURES = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError)


# ---- naming sources in messages ------------------------------------------------------------
def describe(source: ImageLike) -> str:
    """How an error message names a source: the path or URL itself, else its kind."""
    if isinstance(source, (str, os.PathLike)):
        return str(os.fspath(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    name = getattr(source, "name", None)
    if isinstance(name, str):
        return name
    return f"<{type(source).__name__}>"


def is_url(source: object) -> bool:
    return isinstance(source, str) and source.startswith(("http://", "https://"))


# ---- reading bytes ---------------------------------------------------------------------------
def _fetch(url: str, fetch: Fetcher) -> bytes:
    if callable(fetch):
        return bytes(fetch(url))
    from vitkit.images.fetch import fetch_url  # the serving engineer's SSRF-guarded client

    return fetch_url(url, policy=fetch)


def read_source_bytes(source: str | os.PathLike[str], fetch: Fetcher = None) -> bytes:
    """The raw bytes of a path or URL (errors name it)."""
    name = describe(source)
    if is_url(source):
        return _fetch(str(source), fetch)
    try:
        with open(source, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise ImageDecodeError(name, "no such file") from None
    except IsADirectoryError:
        raise UnsupportedImageError(name, "is a directory with no image files in it") from None
    except OSError as error:
        raise ImageDecodeError(name, f"cannot read file: {error.strerror or error}") from None


# ---- opening + checking the header ---------------------------------------------------------
def open_checked(
    data: bytes | BinaryIO,
    name: str,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    allowed_formats: Iterable[str] = COMMON_RASTER,
    reduce_oversized: bool = False,
) -> Image.Image:
    """Open (header only: nothing decoded yet), refusing unknown formats and oversized images
    (``reduce_oversized``: a JPEG over the cap is set to decode at a scale that fits)."""
    stream: BinaryIO = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    formats = tuple(allowed_formats)
    register_phone_formats()
    if isinstance(data, (bytes, bytearray)) and not data:
        raise UnsupportedImageError(name, "empty file (0 bytes)")
    try:
        # PIL warns between 1x and 2x its own cap and refuses above 2x; vitkit's cap (checked
        # below, PIL's by default) decides. No catch_warnings: it is not thread-safe.
        image: Image.Image = Image.open(stream, formats=formats)
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(name, f"refused before decoding: {error}") from None
    except UnidentifiedImageError:
        raise UnsupportedImageError(
            name, f"not an image in a supported format ({', '.join(formats)})"
        ) from None
    except _DECODE_FAILURES as error:
        raise ImageDecodeError(name, f"unreadable image header: {error}") from None
    if reduce_oversized:
        image = _reduce_if_oversized(image, name, max_pixels)
    check_pixels(image.size, name, max_pixels)
    return image


@functools.cache
def register_phone_formats() -> tuple[str, ...]:
    """Teach PIL HEIF (pillow-heif) and, where Pillow lacks it, AVIF (pillow-avif-plugin);
    the formats now readable. Once per process; a plugin that is not installed is skipped, so
    its files get the usual "not an image in a supported format" error."""
    from PIL import features

    readable = []
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        readable.append("HEIF")
    except ImportError:
        pass
    if features.check("avif"):
        readable.append("AVIF")
    else:
        try:
            import pillow_avif  # noqa: F401  (registers the AVIF format on import)

            readable.append("AVIF")
        except ImportError:
            pass
    return tuple(readable)


def jpeg_reduction(size: tuple[int, int], max_pixels: int | None) -> int | None:
    """The smallest DCT reduction (2, 4 or 8) that brings a ``size`` JPEG under ``max_pixels``;
    None when none does (or it fits already, or there is no cap)."""
    width, height = size
    if max_pixels is None or width * height <= max_pixels:
        return None
    for factor in JPEG_REDUCTIONS:
        if -(-width // factor) * -(-height // factor) <= max_pixels:
            return factor
    return None


def decoded_scale(image: Image.Image) -> float:
    """The scale ``load_image(..., reduce_oversized=True)`` decoded ``image`` at (1.0: full)."""
    return float(image.info.get(DECODED_SCALE, 1.0))


def _reduce_if_oversized(image: Image.Image, name: str, max_pixels: int | None) -> Image.Image:
    """A JPEG header over the cap, switched to a reduced-scale decode (PIL draft mode) that
    fits; anything else unchanged (``check_pixels`` then refuses what is still too large)."""
    width, height = image.size
    if image.format != "JPEG" or max_pixels is None or width * height <= max_pixels:
        return image
    factor = jpeg_reduction(image.size, max_pixels)
    if factor is None:
        raise ImageTooLargeError(
            name,
            f"{width}x{height} = {width * height:,} pixels is over the limit of {max_pixels:,} "
            f"even decoded at 1/{JPEG_REDUCTIONS[-1]} scale (refused before decoding)",
        )
    image.draft(image.mode, (width // factor, height // factor))
    image.info[DECODED_SCALE] = round(width / image.size[0]) ** -1.0
    return image


def check_pixels(size: tuple[int, int], name: str, max_pixels: int | None) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageDecodeError(name, f"image has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            name,
            f"{width}x{height} = {width * height:,} pixels is over the limit of {max_pixels:,} "
            "(refused before decoding; raise max_pixels if the image is trusted)",
        )


def _decode_fully(image: Image.Image, name: str) -> Image.Image:
    """Decode every pixel now, so truncation is an error here and not a grey stripe later."""
    try:
        image.load()
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(name, str(error)) from None
    except _DECODE_FAILURES as error:
        kind = image.format or "image"
        raise ImageDecodeError(name, f"truncated or corrupt {kind} data ({error})") from None
    return image


def _exif_transpose(image: Image.Image, name: str, *, in_place: bool) -> Image.Image:
    try:
        if in_place:
            ImageOps.exif_transpose(image, in_place=True)
            return image
        return ImageOps.exif_transpose(image) or image
    except _DECODE_FAILURES as error:
        raise ImageDecodeError(name, f"bad EXIF orientation data ({error})") from None


# ---- modes -> RGB ----------------------------------------------------------------------------
def _has_alpha(image: Image.Image) -> bool:
    # transformers.image_transforms.convert_to_rgb's test, kept identical for parity.
    return "A" in image.getbands() or image.info.get("transparency") is not None


def sixteen_to_eight(values: np.ndarray) -> np.ndarray:
    """0..65535 -> 0..255 by rounding v / 257 (exact for values that came from 8 bits)."""
    clipped = np.clip(values.astype(np.int64), 0, 65535)
    return ((clipped * 255 + 32767) // 65535).astype(np.uint8)


def to_rgb(image: Image.Image, background: tuple[int, int, int] | None = None) -> Image.Image:
    """Any PIL mode -> RGB. See the module docstring for the rules (and the 16-bit exception)."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        gray = sixteen_to_eight(np.asarray(image))
        return Image.fromarray(gray, mode="L").convert("RGB")
    if background is not None and _has_alpha(image):
        rgba = image.convert("RGBA")
        backdrop = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(backdrop, rgba).convert("RGB")
    return image.convert("RGB")


def _to_rgb_named(
    image: Image.Image, background: tuple[int, int, int] | None, name: str
) -> Image.Image:
    try:
        return to_rgb(image, background)
    except (ValueError, OSError) as error:
        raise UnsupportedImageError(
            name, f"cannot convert mode {image.mode} to RGB ({error})"
        ) from None


# ---- arrays and tensors ----------------------------------------------------------------------
def _array_to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return sixteen_to_eight(array)
    if np.issubdtype(array.dtype, np.floating):
        if array.size and (not np.isfinite(array).all() or array.min() < 0 or array.max() > 1):
            raise ImageDecodeError(
                name, "float pixel values must lie in [0, 1] (or pass uint8 values in 0..255)"
            )
        # Rounding, so a float image made as uint8 / 255 comes back to the same uint8 values.
        return np.rint(array.astype(np.float64) * 255.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ImageDecodeError(name, "integer pixel values must lie in 0..255")
        return array.astype(np.uint8)
    raise UnsupportedImageError(name, f"unsupported array dtype {array.dtype}")


def array_to_pil(array: np.ndarray, name: str, *, channels_first: bool = False) -> Image.Image:
    """HW, HWC (C = 1, 3, 4) or, with ``channels_first``, CHW arrays -> PIL image."""
    if array.ndim == 3 and channels_first:
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        layout = "CHW" if channels_first else "HWC"
        raise UnsupportedImageError(
            name, f"array of shape {tuple(array.shape)} is not an image (want HW or {layout})"
        )
    pixels = np.ascontiguousarray(_array_to_uint8(array, name))
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[pixels.ndim if pixels.ndim == 2 else pixels.shape[-1]]
    return Image.fromarray(pixels, mode=mode)


def _is_channels_first(shape: tuple[int, ...], *, prefer_first: bool) -> bool:
    first, last = shape[0] in (1, 3, 4), shape[-1] in (1, 3, 4)
    return first if prefer_first or not last else not last


def tensor_to_pil(tensor: torch.Tensor, name: str) -> Image.Image:
    array = tensor.detach().cpu().numpy()
    first = array.ndim == 3 and _is_channels_first(array.shape, prefer_first=True)
    return array_to_pil(array, name, channels_first=first)


def ndarray_to_pil(array: np.ndarray, name: str) -> Image.Image:
    first = array.ndim == 3 and _is_channels_first(array.shape, prefer_first=False)
    return array_to_pil(array, name, channels_first=first)


# ---- the public entry points -----------------------------------------------------------------
def load_image(
    source: ImageLike,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    allowed_formats: Iterable[str] = COMMON_RASTER,
    fetch: Fetcher = None,
    background: tuple[int, int, int] | None = None,
    reduce_oversized: bool = False,
) -> Image.Image:
    """Any supported source -> upright RGB ``PIL.Image`` (fully decoded).

    ``fetch``: how URLs are fetched; a ``vitkit.images.fetch.FetchPolicy`` (None = its defaults) or any
    callable ``url -> bytes``. ``background``: composite transparency onto this colour instead of
    dropping alpha (see the module docstring). ``reduce_oversized``: a JPEG over ``max_pixels``
    is decoded at 1/2, 1/4 or 1/8 scale instead of refused; ``decoded_scale(image)`` says which.
    """
    name = describe(source)
    if isinstance(source, Image.Image):
        check_pixels(source.size, name, max_pixels)
        return _to_rgb_named(_exif_transpose(source, name, in_place=False), background, name)
    if isinstance(source, np.ndarray):
        image = ndarray_to_pil(source, name)
        check_pixels(image.size, name, max_pixels)
        return _to_rgb_named(image, background, name)
    if _is_tensor(source):
        image = tensor_to_pil(source, name)
        check_pixels(image.size, name, max_pixels)
        return _to_rgb_named(image, background, name)
    data = _source_bytes_or_stream(source, name, fetch)
    image = open_checked(
        data,
        name,
        max_pixels=max_pixels,
        allowed_formats=allowed_formats,
        reduce_oversized=reduce_oversized,
    )
    image = _decode_fully(image, name)
    return _to_rgb_named(_exif_transpose(image, name, in_place=True), background, name)


def _is_tensor(source: object) -> bool:
    module = type(source).__module__
    return module.startswith("torch") and hasattr(source, "detach")


def _source_bytes_or_stream(source: ImageLike, name: str, fetch: Fetcher) -> bytes | BinaryIO:
    if isinstance(source, (str, os.PathLike)):
        return read_source_bytes(source, fetch)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if hasattr(source, "read"):
        data = source.read()
        if not isinstance(data, (bytes, bytearray)):
            raise UnsupportedImageError(name, "file object must be opened in binary mode ('rb')")
        return bytes(data)
    raise UnsupportedImageError(
        name,
        f"unsupported input type {type(source).__name__}: pass a path, URL, bytes, binary file "
        "object, PIL image, numpy array or torch tensor",
    )


def decode_uint8(
    source: ImageLike,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    allowed_formats: Iterable[str] = COMMON_RASTER,
    fetch: Fetcher = None,
    background: tuple[int, int, int] | None = None,
    draft_size: int | None = None,
    scratch: bool = False,
) -> torch.Tensor:
    """Any supported source -> (3, H, W) uint8 tensor, the input of the fast preprocessing path.

    8-bit RGB/grey JPEG bytes are decoded by simplejpeg or torchvision (libjpeg-turbo; on the
    photos tested they give the same pixels as PIL) after the same header checks as
    ``load_image``; anything else goes through ``load_image``. The tensor
    is usually a channels-last view (stride 1 on C), which torch's uint8 antialiased resize
    handles fastest; an upright JPEG's is a view into a 4-channel RGBX buffer (``fast_jpeg``).

    ``draft_size`` (APPROXIMATE, JPEG only): decode at the largest DCT reduction (libjpeg-turbo's
    M/8 scales through simplejpeg, else PIL draft mode's 1/2, 1/4, 1/8) that keeps both sides >=
    draft_size. Faster, but the pixels are not those a full decode followed by a resize gives.

    ``scratch=True``: the result may live in a per-thread buffer that the next scratch decode on
    the same thread overwrites (no fresh memory per image); for callers that resize it at once.
    """
    import torch

    name = describe(source)
    if _is_tensor(source) and source.dtype == torch.uint8 and source.ndim == 3 and len(source) == 3:
        check_pixels((source.shape[2], source.shape[1]), name, max_pixels)
        return source
    if isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(
        source, "read"
    ):
        data = _source_bytes_or_stream(source, name, fetch)
        assert isinstance(data, bytes)
        formats = tuple(allowed_formats)
        route = _jpeg_route(data, formats)
        if route is not None:
            check_pixels((route.width, route.height), name, max_pixels)
            if fast_jpeg.decoder() and route.upright:
                pixels = route.width * route.height if scratch else None
                return fast_jpeg.decode_rgbx(data, name, min_side=draft_size, scratch_pixels=pixels)
            if not draft_size and _torchvision_jpeg_decoder() is not None:
                return _torchvision_decode_jpeg(data, name)
        header = open_checked(data, name, max_pixels=max_pixels, allowed_formats=formats)
        if draft_size and header.format == "JPEG":
            header.draft(header.mode, (draft_size, draft_size))
        image = _decode_fully(header, name)
        image = _to_rgb_named(_exif_transpose(image, name, in_place=True), background, name)
    else:
        image = load_image(source, max_pixels=max_pixels, background=background)
    return pil_to_uint8(image)


def pil_to_uint8(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) uint8 tensor (a channels-last view, no copy beyond PIL's)."""
    import torch

    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


# JPEG start-of-frame markers libjpeg-turbo decodes the same way in torchvision and PIL:
# baseline, extended sequential, progressive (Huffman). Others (lossless, arithmetic) use PIL.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2})
_RGB_MODE = 3  # torchvision.io.ImageReadMode.RGB.value


def _jpeg_route(data: bytes, allowed_formats: tuple[str, ...]) -> _JpegHeader | None:
    """The header when libjpeg-turbo decodes ``data`` exactly as the PIL path would.

    Reads only the header fields it needs (cheaper than PIL's parser); None sends the bytes
    through PIL, which then also reports whatever is wrong with them. PNGs always go through
    PIL: torchvision's decode_png crashed the process (SIGSEGV) on corrupted PNG bytes in our
    fuzzing (a flipped byte in an 8x8 RGB PNG), where PIL raises an error we can report.
    """
    if data.startswith(b"\xff\xd8") and "JPEG" in allowed_formats:
        header = _jpeg_header(data)
        # 8-bit grey or colour; CMYK/YCCK go through PIL (its Adobe inversion is the reference).
        if header and header.precision == 8 and header.components in (1, 3):
            return header
    return None


@dataclass(frozen=True)
class _JpegHeader:
    precision: int
    width: int
    height: int
    components: int
    upright: bool  # no EXIF orientation other than 1 (see fast_jpeg: it does not rotate)


def _jpeg_header(data: bytes) -> _JpegHeader | None:
    """The frame (SOF) and EXIF orientation, from one walk over the segments before the scan.

    None without a baseline/progressive frame; ``upright`` is False when an EXIF block asks for
    a rotation or cannot be read, or the segments stop making sense after the frame.
    """
    index, size = 2, len(data)
    frame: tuple[int, int, int, int] | None = None
    upright = True
    while index + 4 <= size:
        if data[index] != 0xFF:
            upright = False  # garbage before the scan: let torchvision judge it
            break
        marker = data[index + 1]
        if marker == 0xFF:  # fill byte
            index += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            index += 2
            continue
        if marker == 0xDA:  # start of scan: libjpeg reads no EXIF after it
            break
        length = int.from_bytes(data[index + 2 : index + 4], "big")
        if marker in _JPEG_SOF and index + 10 <= size:
            height = int.from_bytes(data[index + 5 : index + 7], "big")
            width = int.from_bytes(data[index + 7 : index + 9], "big")
            frame = (data[index + 4], height, width, data[index + 9])
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return None  # another frame type: leave it to PIL
        elif marker == 0xE1 and data[index + 4 : index + 10] == fast_jpeg.EXIF_HEADER:
            exif = data[index + 10 : index + 2 + length]
            upright = upright and fast_jpeg.exif_orientation(exif) == 1
        if length < 2:
            return None
        index += 2 + length
    if frame is None:
        return None
    precision, height, width, components = frame
    return _JpegHeader(precision, width, height, components, upright)


@functools.cache
def _torchvision_jpeg_decoder() -> Callable[..., torch.Tensor] | None:
    """torchvision's JPEG decode op, or None where torchvision.io cannot decode.

    The registered ops are called directly: the Python wrappers add only usage logging and, from
    torchvision 0.29, a DeprecationWarning on every call (torchcodec supersedes them; its decoder
    is not what transformers' reference used here). Without them everything goes through PIL.
    """
    try:
        import torch
        import torchvision.io  # noqa: F401  (loads the image extension that registers the ops)

        return torch.ops.image.decode_jpeg
    except (ImportError, AttributeError, RuntimeError):
        return None


def _torchvision_decode_jpeg(data: bytes, name: str) -> torch.Tensor:
    import torch

    decode = _torchvision_jpeg_decoder()
    assert decode is not None
    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    try:
        return decode(encoded, _RGB_MODE, True)  # mode RGB, apply EXIF orientation
    except RuntimeError as error:
        reason = str(error).rsplit(",", 1)[-1].strip()
        raise ImageDecodeError(name, f"truncated or corrupt JPEG data ({reason})") from None


def __getattr__(name: str) -> object:
    if name == "expand_inputs":  # moved: globbing command-line inputs is not decoding
        raise AttributeError(
            "vitkit.images.decode.expand_inputs moved to vitkit.images.sources.expand_inputs"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
