"""vitkit.images.decode: every input kind decodes to the same RGB pixels; every bad input is a named error."""

from __future__ import annotations

import http.server
import io
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from conftest import real_photos
from vitkit.errors import ImageDecodeError, ImageTooLargeError, UnsupportedImageError
from vitkit.images import decode as vio
from vitkit.images.sources import expand_inputs

pytestmark = [
    pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
]


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    return real_photos()["coffee"]  # 400x600 RGB


@pytest.fixture(scope="module")
def coffee_png(coffee: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("io") / "coffee.png"
    Image.fromarray(coffee).save(path)
    return path


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


# ---- every kind of source --------------------------------------------------------------------
def test_every_source_kind_gives_the_same_rgb_pixels(coffee: np.ndarray, coffee_png: Path) -> None:
    data = coffee_png.read_bytes()
    chw = torch.from_numpy(coffee).permute(2, 0, 1)
    sources = {
        "str path": str(coffee_png),
        "Path": coffee_png,
        "bytes": data,
        "bytearray": bytearray(data),
        "memoryview": memoryview(data),
        "BytesIO": lambda: io.BytesIO(data),  # a stream is read once: a fresh one each call
        "PIL": Image.fromarray(coffee),
        "ndarray HWC uint8": coffee,
        "ndarray float [0,1]": coffee / 255.0,
        "tensor CHW uint8": chw,
        "tensor CHW float": chw.float() / 255,
        "tensor HWC uint8": torch.from_numpy(coffee),
    }
    for kind, source in sources.items():
        fresh = source if not callable(source) else source()
        assert np.array_equal(pixels(vio.load_image(fresh)), coffee), kind
        fresh = source if not callable(source) else source()
        assert np.array_equal(vio.decode_uint8(fresh).permute(1, 2, 0).numpy(), coffee), kind
    with coffee_png.open("rb") as handle:  # an open binary file
        assert np.array_equal(pixels(vio.load_image(handle)), coffee)


def test_grayscale_array_and_palette_la_modes_become_rgb(coffee: np.ndarray) -> None:
    gray = real_photos()["astronaut"][..., 1]
    assert np.array_equal(pixels(vio.load_image(gray)), np.dstack([gray] * 3))
    image = Image.fromarray(coffee)
    for mode in ("P", "LA", "L", "CMYK", "1"):
        converted = image.convert(mode)
        expected = np.asarray(converted.convert("RGB"))
        assert np.array_equal(pixels(vio.load_image(converted)), expected), mode
    gif = encode(image.convert("P"), "GIF")
    assert np.array_equal(
        pixels(vio.load_image(gif)), np.asarray(Image.open(io.BytesIO(gif)).convert("RGB"))
    )


def test_url_goes_through_the_given_fetcher(coffee_png: Path, coffee: np.ndarray) -> None:
    asked: list[str] = []

    def fetch(url: str) -> bytes:
        asked.append(url)
        return coffee_png.read_bytes()

    image = vio.load_image("https://images.example/coffee.png", fetch=fetch)
    assert asked == ["https://images.example/coffee.png"]
    assert np.array_equal(pixels(image), coffee)


@pytest.fixture
def loopback_server(coffee_png: Path) -> Iterator[str]:
    body = coffee_png.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/coffee.png"
    server.shutdown()
    server.server_close()


def test_url_default_fetch_is_vitkit_fetch_with_its_policy(
    loopback_server: str, coffee: np.ndarray
) -> None:
    from vitkit.errors import URLNotAllowedError
    from vitkit.images.fetch import FetchPolicy

    with pytest.raises(URLNotAllowedError):  # loopback is private: refused by default
        vio.load_image(loopback_server)
    image = vio.load_image(loopback_server, fetch=FetchPolicy(allow_private=True))
    assert np.array_equal(pixels(image), coffee)
    tensor = vio.decode_uint8(loopback_server, fetch=FetchPolicy(allow_private=True))
    assert np.array_equal(tensor.permute(1, 2, 0).numpy(), coffee)


# ---- modes that need care ---------------------------------------------------------------------
def test_rgba_png_drops_alpha_or_composites_on_a_background(coffee: np.ndarray) -> None:
    alpha = np.tile(np.linspace(0, 255, coffee.shape[1]).astype(np.uint8), (coffee.shape[0], 1))
    data = encode(Image.fromarray(np.dstack([coffee, alpha]), mode="RGBA"), "PNG")
    assert np.array_equal(pixels(vio.load_image(data)), coffee)  # PIL convert("RGB")
    assert np.array_equal(vio.decode_uint8(data).permute(1, 2, 0).numpy(), coffee)
    white = pixels(vio.load_image(data, background=(255, 255, 255)))
    a = alpha[..., None] / 255.0
    expected = coffee * a + 255 * (1 - a)
    assert np.abs(white.astype(float) - expected).max() <= 1.0
    assert white[:, 0].min() == 255  # fully transparent column -> white
    fast_white = vio.decode_uint8(data, background=(255, 255, 255))
    assert np.array_equal(fast_white.permute(1, 2, 0).numpy(), white)


def test_16_bit_png_is_scaled_not_clipped(coffee: np.ndarray) -> None:
    gray8 = coffee[..., 0]
    gray16 = gray8.astype(np.uint16) * 257  # 0..65535, what a 16-bit scan of it holds
    data = encode(Image.fromarray(gray16), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    for decoded in (pixels(vio.load_image(data)), vio.decode_uint8(data).permute(1, 2, 0).numpy()):
        assert np.array_equal(decoded, np.dstack([gray8] * 3))
    # PIL alone would clip: every value above 255 becomes white.
    clipped = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert (clipped == 255).mean() > 0.9
    # 16-bit arrays and big-endian/int modes scale the same way
    assert np.array_equal(pixels(vio.load_image(gray16)), np.dstack([gray8] * 3))
    as_int = Image.fromarray(gray16.astype(np.int32), mode="I")
    big_endian = Image.fromarray(gray16.astype(">u2"))
    assert big_endian.mode == "I;16B"
    for image in (as_int, big_endian):
        assert np.array_equal(pixels(vio.load_image(image)), np.dstack([gray8] * 3)), image.mode


def test_cmyk_jpeg_becomes_rgb(coffee: np.ndarray) -> None:
    data = encode(Image.fromarray(coffee).convert("CMYK"), "JPEG", quality=95)
    image = vio.load_image(data)
    assert np.array_equal(pixels(image), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    assert np.abs(pixels(image).astype(int) - coffee).mean() < 3  # still the same photo
    assert np.array_equal(vio.decode_uint8(data).permute(1, 2, 0).numpy(), pixels(image))


def test_jpeg_fast_decode_equals_pil_decode_on_real_photos() -> None:
    for name, photo in real_photos().items():
        for subsampling in (0, 2):
            data = encode(Image.fromarray(photo), "JPEG", quality=85, subsampling=subsampling)
            fast = vio.decode_uint8(data).permute(1, 2, 0).numpy()
            assert np.array_equal(fast, pixels(vio.load_image(data))), name


def test_exif_orientation_is_applied(coffee: np.ndarray) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = encode(Image.fromarray(coffee), "JPEG", quality=95, exif=exif.tobytes())
    stored = Image.open(io.BytesIO(data)).convert("RGB")
    assert stored.size == (600, 400)
    upright = vio.load_image(data)
    assert upright.size == (400, 600)  # width, height: now portrait
    assert np.array_equal(pixels(upright), np.rot90(np.asarray(stored), k=-1))
    fast = vio.decode_uint8(data)
    assert np.array_equal(fast.permute(1, 2, 0).numpy(), pixels(upright))
    tagged = Image.open(io.BytesIO(data))
    tagged.load()
    assert vio.load_image(tagged).size == (400, 600)  # PIL images with EXIF, too
    assert tagged.size == (600, 400)  # ... without modifying the caller's image


def test_one_pixel_image(tmp_path: Path) -> None:
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (10, 20, 30)).save(path)
    assert pixels(vio.load_image(path)).tolist() == [[[10, 20, 30]]]
    assert vio.decode_uint8(path).shape == (3, 1, 1)


# ---- bad inputs ---------------------------------------------------------------------------------
def assert_error(kind: type[Exception], match: str, source: object, **options: object) -> None:
    for decode in (vio.load_image, vio.decode_uint8):
        with pytest.raises(kind, match=match):
            decode(source, **options)


def test_bad_files_are_named_errors(tmp_path: Path, coffee: np.ndarray) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert_error(UnsupportedImageError, r"empty\.jpg: empty file", empty)

    text = tmp_path / "notes.jpg"
    text.write_text("this is not a photo\n")
    assert_error(UnsupportedImageError, r"notes\.jpg: not an image", text)

    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(encode(Image.fromarray(coffee), "JPEG")[:5000])
    assert_error(ImageDecodeError, r"cut\.jpg: truncated or corrupt JPEG", truncated)
    assert not ImageFile.LOAD_TRUNCATED_IMAGES

    cut_png = tmp_path / "cut.png"
    cut_png.write_bytes(encode(Image.fromarray(coffee), "PNG")[:20000])
    assert_error(ImageDecodeError, r"cut\.png: truncated or corrupt PNG", cut_png)

    assert_error(ImageDecodeError, r"missing\.jpg: no such file", tmp_path / "missing.jpg")
    assert_error(UnsupportedImageError, "directory", tmp_path)


def test_corrupted_image_bytes_are_errors_never_crashes() -> None:
    """Every single-byte corruption of a small PNG and JPEG: a named error or pixels, no crash.

    torchvision's decode_png took the process down (SIGSEGV) on such bytes (byte 48 of this
    8x8 PNG set to 107, among others), which is why PNGs are decoded by PIL.
    """
    seeds = {
        "dot.png": encode(Image.fromarray(np.zeros((8, 8, 3), np.uint8)), "PNG"),
        "cat.jpg": encode(Image.fromarray(real_photos()["chelsea"]).resize((24, 16)), "JPEG"),
    }
    for name, seed in seeds.items():
        for position in range(len(seed)):
            for value in (0, 107, 255):
                data = bytearray(seed)
                data[position] = value
                stream = io.BytesIO(bytes(data))
                stream.name = name
                try:
                    pixels = vio.decode_uint8(stream)
                except (ImageDecodeError, UnsupportedImageError, ImageTooLargeError) as error:
                    assert str(error).startswith(name)
                else:
                    assert pixels.dtype == torch.uint8 and pixels.shape[0] == 3


def test_postscript_is_never_opened() -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n%%EOF\n"
    assert_error(UnsupportedImageError, "not an image in a supported format", eps)


def test_only_allowed_formats_open(coffee: np.ndarray) -> None:
    data = encode(Image.fromarray(coffee), "BMP")
    assert vio.load_image(data).size == (600, 400)
    assert_error(UnsupportedImageError, "JPEG, PNG", data, allowed_formats=("JPEG", "PNG"))


def png_header_only(width: int, height: int, depth: int = 1, colour: int = 0) -> bytes:
    """A PNG whose IHDR claims width x height with one tiny IDAT: a 'bomb' of a few bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_decompression_bombs_are_refused_before_decoding(
    monkeypatch: pytest.MonkeyPatch, coffee: np.ndarray
) -> None:
    def no_decoding(self: object) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    bomb = png_header_only(30000, 30000)
    assert len(bomb) < 200
    assert_error(ImageTooLargeError, "<", bomb)  # over twice PIL's cap: PIL's own refusal
    assert_error(ImageTooLargeError, "10000x10000", png_header_only(10000, 10000))  # vitkit's
    assert_error(ImageTooLargeError, "12000x8000", png_header_only(12000, 8000, 8, 2))  # RGB
    jpeg = bytearray(encode(Image.fromarray(coffee), "JPEG"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 8000, 12000)  # SOF claims 12000x8000
    assert_error(ImageTooLargeError, "12000x8000", bytes(jpeg))
    photo = encode(Image.fromarray(coffee), "JPEG")
    assert_error(ImageTooLargeError, "240,000 pixels", photo, max_pixels=100_000)
    assert_error(ImageTooLargeError, "pixels", coffee, max_pixels=100_000)


def test_max_pixels_is_configurable(coffee: np.ndarray) -> None:
    photo = encode(Image.fromarray(coffee), "JPEG")
    assert vio.load_image(photo, max_pixels=240_000).size == (600, 400)
    assert vio.load_image(photo, max_pixels=None).size == (600, 400)


def test_bad_arrays_and_types() -> None:
    with pytest.raises(ImageDecodeError, match=r"\[0, 1\]"):
        vio.load_image(np.full((4, 4, 3), 2.0))
    with pytest.raises(UnsupportedImageError, match="shape"):
        vio.load_image(np.zeros((5, 5, 7), np.uint8))
    with pytest.raises(UnsupportedImageError, match="unsupported input type int"):
        vio.load_image(42)
    with pytest.raises(UnsupportedImageError, match="binary mode"):
        vio.load_image(io.StringIO("text"))


# ---- expanding inputs ----------------------------------------------------------------------------
def test_expand_inputs(tmp_path: Path) -> None:
    (tmp_path / "b" / "deeper").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    for name in ("b/deeper/z.JPG", "b/a.png", "c.webp", "b/readme.txt"):
        (tmp_path / name).write_bytes(b"x")
    url = "https://example.com/cat.jpg"
    given = [str(tmp_path / "b"), url, str(tmp_path / "missing.jpg"), tmp_path / "empty"]
    assert expand_inputs(given) == [
        str(tmp_path / "b" / "a.png"),
        str(tmp_path / "b" / "deeper" / "z.JPG"),
        url,
        str(tmp_path / "missing.jpg"),  # kept: the caller reports it for that input
        str(tmp_path / "empty"),  # kept: "a directory with no image files"
    ]
    assert expand_inputs([tmp_path])[-1] == str(tmp_path / "c.webp")
