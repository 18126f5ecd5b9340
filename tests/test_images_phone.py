"""Phone photos: HEIC/HEIF and AVIF read like any other image, and a JPEG over the pixel cap
decoded at a reduced DCT scale instead of refused (``reduce_oversized``).

References are the decoders' own outputs (pillow-heif's ``open_heif``, Pillow's AVIF plugin,
Pillow's JPEG draft mode), never vitkit's; the photo is scikit-image's "chelsea".
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pillow_heif
import pytest
from PIL import Image
from skimage import data

from vitkit.errors import ImageTooLargeError
from vitkit.images.decode import decode_uint8, decoded_scale, load_image
from vitkit.images.processor import ImageProcessor
from vitkit.images.sources import expand_inputs


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    if fmt == "HEIF":
        pillow_heif.register_heif_opener()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    image = Image.fromarray(data.chelsea())
    return image.resize((226, 150), Image.BILINEAR)


def test_heic_decodes_as_pillow_heif_does(photo: Image.Image) -> None:
    heic = encoded(photo, "HEIF", quality=90)
    reference = np.asarray(pillow_heif.open_heif(heic, convert_hdr_to_8bit=True))
    image = load_image(heic)
    assert image.mode == "RGB" and image.size == photo.size
    np.testing.assert_array_equal(np.asarray(image), reference)
    # the fast path (uint8 tensor) reads it through the same decoder
    pixels = decode_uint8(heic)
    np.testing.assert_array_equal(pixels.permute(1, 2, 0).numpy(), reference)


def test_avif_decodes_as_pillow_does(photo: Image.Image) -> None:
    avif = encoded(photo, "AVIF", quality=90)
    with Image.open(io.BytesIO(avif)) as opened:
        reference = np.asarray(opened.convert("RGB"))
    np.testing.assert_array_equal(np.asarray(load_image(avif)), reference)
    # close to the photo it encodes: these are the same picture, not just "some image"
    difference = np.abs(reference.astype(int) - np.asarray(photo).astype(int)).mean()
    assert difference < 6, difference


def test_phone_formats_reach_the_processor_and_the_folder_walk(
    photo: Image.Image, tmp_path: Path
) -> None:
    (tmp_path / "a.heic").write_bytes(encoded(photo, "HEIF", quality=90))
    (tmp_path / "b.avif").write_bytes(encoded(photo, "AVIF", quality=90))
    found = expand_inputs([tmp_path])
    assert [Path(p).name for p in found] == ["a.heic", "b.avif"]
    batch = ImageProcessor()(found)
    assert batch.shape == (2, 3, 224, 224)


def test_oversized_jpeg_decodes_at_the_scale_that_fits() -> None:
    big = Image.fromarray(data.chelsea()).resize((2016, 1512), Image.BILINEAR)
    jpeg = encoded(big, "JPEG", quality=85)
    cap = 2016 * 1512 // 3  # over the cap; 1/2 scale (1008x756) fits
    with pytest.raises(ImageTooLargeError, match="over the limit"):
        load_image(jpeg, max_pixels=cap)
    image = load_image(jpeg, max_pixels=cap, reduce_oversized=True)
    assert image.size == (1008, 756) and decoded_scale(image) == 0.5
    with Image.open(io.BytesIO(jpeg)) as reference:  # Pillow's own DCT-scaled decode
        reference.draft("RGB", (1008, 756))
        np.testing.assert_array_equal(np.asarray(image), np.asarray(reference.convert("RGB")))
    quarter = load_image(jpeg, max_pixels=2016 * 1512 // 10, reduce_oversized=True)
    assert quarter.size == (504, 378) and decoded_scale(quarter) == 0.25
    assert decoded_scale(load_image(jpeg)) == 1.0  # under the cap: the full decode


def test_what_cannot_be_reduced_is_still_refused(photo: Image.Image) -> None:
    png = encoded(photo, "PNG")
    with pytest.raises(ImageTooLargeError, match="over the limit"):
        load_image(png, max_pixels=1000, reduce_oversized=True)  # PNG has no reduced decode
    jpeg = encoded(photo, "JPEG")
    with pytest.raises(ImageTooLargeError, match="even decoded at 1/8 scale"):
        load_image(jpeg, max_pixels=100, reduce_oversized=True)
