"""The RGBX JPEG decoder of the fast path: same pixels as torchvision and PIL, EXIF respected."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import torch
import torchvision.io as tvio
from PIL import Image
from torchvision.transforms.v2 import functional as tvF

from conftest import real_photos
from vitkit.errors import ImageDecodeError
from vitkit.images import decode as vio
from vitkit.images import fast_jpeg


def jpeg(pixels: np.ndarray, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def torchvision_rgb(data: bytes) -> torch.Tensor:
    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return tvio.decode_jpeg(encoded, mode=tvio.ImageReadMode.RGB, apply_exif_orientation=True)


def with_orientation(data: bytes, orientation: int, order: bytes = b"II") -> bytes:
    """``data`` with an APP1 EXIF block (byte order II or MM) holding only the orientation tag."""
    fmt = "<" if order == b"II" else ">"
    tiff = order + struct.pack(f"{fmt}HI", 42, 8) + struct.pack(f"{fmt}H", 1)
    tiff += struct.pack(f"{fmt}HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(f"{fmt}I", 0)
    payload = b"Exif\x00\x00" + tiff
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


@pytest.mark.parametrize("name", ["astronaut", "coffee", "histology", "china"])
@pytest.mark.parametrize("options", [{"subsampling": 0}, {"subsampling": 2}, {"progressive": True}])
def test_same_pixels_as_torchvision_and_pil(name: str, options: dict[str, object]) -> None:
    data = jpeg(real_photos()[name], quality=90, **options)
    decoded = vio.decode_uint8(data)
    assert fast_jpeg.rgbx_view(decoded) is not None  # the RGBX decoder was the one used
    assert torch.equal(decoded, torchvision_rgb(data))
    assert np.array_equal(decoded.permute(1, 2, 0).numpy(), np.asarray(vio.load_image(data)))


def test_greyscale_jpeg_becomes_three_equal_channels() -> None:
    grey = np.asarray(Image.fromarray(real_photos()["flower"]).convert("L"))
    data = jpeg(grey, quality=90)
    decoded = vio.decode_uint8(data)
    assert fast_jpeg.rgbx_view(decoded) is not None
    assert torch.equal(decoded, torchvision_rgb(data))


@pytest.mark.parametrize("order", [b"II", b"MM"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_goes_where_it_is_applied(order: bytes, orientation: int) -> None:
    data = with_orientation(jpeg(real_photos()["chelsea"], quality=90), orientation, order)
    decoded = vio.decode_uint8(data)
    # upright: the RGBX decoder; rotated: torchvision, which applies the orientation
    assert (fast_jpeg.rgbx_view(decoded) is not None) == (orientation == 1)
    assert torch.equal(decoded, torchvision_rgb(data))  # torchvision applies the orientation
    pil = np.asarray(vio.load_image(data))
    assert np.array_equal(decoded.permute(1, 2, 0).numpy(), pil)


def test_unreadable_exif_is_left_to_torchvision() -> None:
    data = jpeg(real_photos()["chelsea"], quality=90)
    payload = b"Exif\x00\x00" + b"XX\x00\x2a"  # not a TIFF byte order
    broken = data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]
    decoded = vio.decode_uint8(broken)
    assert fast_jpeg.rgbx_view(decoded) is None  # torchvision decoded it
    assert torch.equal(decoded, torchvision_rgb(data))


def test_truncated_jpeg_is_an_error_naming_the_source() -> None:
    data = jpeg(real_photos()["coffee"], quality=90)[:5000]
    with pytest.raises(ImageDecodeError, match="truncated or corrupt JPEG"):
        vio.decode_uint8(data)


def test_resizing_the_rgbx_view_equals_resizing_contiguous_rgb() -> None:
    data = jpeg(real_photos()["astronaut"], quality=90)
    decoded = vio.decode_uint8(data)
    widened = fast_jpeg.rgbx_view(decoded)
    assert widened is not None and widened.shape[0] == 4
    for size in ([224, 224], [384, 300]):
        for mode in (tvF.InterpolationMode.BILINEAR, tvF.InterpolationMode.BICUBIC):
            expected = tvF.resize(decoded.contiguous(), size, interpolation=mode, antialias=True)
            got = tvF.resize(widened, size, interpolation=mode, antialias=True)[:3]
            assert torch.equal(got, expected)


def test_rgbx_view_only_widens_what_has_a_fourth_channel() -> None:
    rgb = torch.zeros(3, 8, 8, dtype=torch.uint8)
    assert fast_jpeg.rgbx_view(rgb) is None
    assert fast_jpeg.rgbx_view(rgb.permute(1, 2, 0).contiguous().permute(2, 0, 1)) is None
    rgba = torch.arange(4 * 8 * 8, dtype=torch.int64).to(torch.uint8).view(8, 8, 4)
    view = fast_jpeg.rgbx_view(rgba.permute(2, 0, 1)[:3])
    assert view is not None and torch.equal(view, rgba.permute(2, 0, 1))


def test_draft_decodes_at_the_smallest_dct_scale_that_keeps_the_size() -> None:
    photo = np.asarray(Image.fromarray(real_photos()["china"]).resize((640, 480)))
    data = jpeg(photo, quality=90)
    draft = vio.decode_uint8(data, draft_size=224)
    assert draft.shape == (3, 240, 320)  # 1/2 scale; 3/8 would make the height 180 < 224
    assert vio.decode_uint8(data, draft_size=1000).shape == (3, 480, 640)  # never upscaled
    # the same picture: a 2x2 box average of the full decode is close to the 1/2-scale decode
    full = vio.decode_uint8(data).float()
    boxed = torch.nn.functional.avg_pool2d(full[None], 2)[0]
    assert (boxed - draft.float()).abs().mean().item() < 3.0
    rotated = with_orientation(data, 6)  # EXIF rotation: PIL's draft path, still upright
    assert vio.decode_uint8(rotated, draft_size=224).shape == (3, 320, 240)


def test_scratch_decoding_never_leaks_into_a_batch() -> None:
    """The processor decodes into a reused buffer; images that need no resize must not share it."""
    from vitkit.images.processor import ImageProcessor

    photos = [real_photos()[name] for name in ("astronaut", "coffee", "china")]
    files = [jpeg(np.asarray(Image.fromarray(p).resize((64, 48))), quality=90) for p in photos]
    expected = torch.stack([torchvision_rgb(data) for data in files]).float()
    for config in ({"do_resize": False}, {"size": {"height": 48, "width": 64}}):
        processor = ImageProcessor.from_dict({**config, "do_rescale": False, "do_normalize": False})
        assert torch.equal(processor(files), expected)
    resized = ImageProcessor.from_dict({"size": {"height": 24, "width": 32}})(files)
    one_by_one = torch.cat(
        [ImageProcessor.from_dict({"size": {"height": 24, "width": 32}})(f) for f in files]
    )
    assert torch.equal(resized, one_by_one)
