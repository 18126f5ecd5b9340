"""ImageProcessor: each mode against its transformers 5 reference, on real photos.

"fast" must equal ``transformers.ViTImageProcessor`` (the torchvision backend, transformers 5's
default) and "pil" must equal ``transformers.ViTImageProcessorPil`` within 1e-5 (in practice they
are bit-identical). The references run in the test on the same inputs; nothing is hard-coded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from conftest import real_photos
from vitkit.errors import ImageDecodeError, VitkitError
from vitkit.images.processor import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, ImageProcessor
from vitkit.models.config import ViTConfig

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
TOLERANCE = 1e-5

CONFIGS = {
    "hf-vit-default": {},  # bilinear 224x224, mean = std = 0.5
    "bicubic-imagenet-nonsquare": {
        "resample": 3,
        "size": {"height": 160, "width": 240},
        "image_mean": list(IMAGENET_DEFAULT_MEAN),
        "image_std": list(IMAGENET_DEFAULT_STD),
    },
    "bilinear-imagenet-384": {
        "size": {"height": 384, "width": 384},
        "image_mean": list(IMAGENET_DEFAULT_MEAN),
        "image_std": list(IMAGENET_DEFAULT_STD),
    },
    "shortest-edge-crop-bicubic": {
        "resample": 3,
        "size": {"shortest_edge": 248},
        "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224},
    },
    "rescale-only": {"do_normalize": False},
}


def reference(mode: str, config: dict) -> object:
    if mode == "fast":
        return transformers.ViTImageProcessor(**config)
    return transformers.ViTImageProcessorPil(**config)


def reference_pixels(mode: str, config: dict, images: list) -> torch.Tensor:
    return reference(mode, config)(images, return_tensors="pt")["pixel_values"].float()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [Image.fromarray(pixels) for pixels in real_photos().values()]


@pytest.fixture(scope="module")
def jpeg_paths(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("processor_jpegs")
    paths = []
    for name, pixels in real_photos().items():
        path = folder / f"{name}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("mode", ["fast", "pil"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_mode_equals_its_transformers_reference_on_real_photos(
    mode: str, name: str, photos: list[Image.Image]
) -> None:
    config = CONFIGS[name]
    ours = ImageProcessor.from_dict(config)(photos, mode=mode)
    expected = reference_pixels(mode, config, photos)
    assert ours.dtype == torch.float32
    assert max_diff(ours, expected) <= TOLERANCE


@pytest.mark.parametrize("mode", ["fast", "pil"])
def test_file_paths_match_the_reference_reading_the_same_files(
    mode: str, jpeg_paths: list[str]
) -> None:
    # Each reference decodes paths itself: the torchvision backend with torchvision.io, the PIL
    # backend with PIL. vitkit's fast mode decodes JPEG with torchvision too.
    config = CONFIGS["bicubic-imagenet-nonsquare"]
    ours = ImageProcessor.from_dict(config)(jpeg_paths, mode=mode)
    assert max_diff(ours, reference_pixels(mode, config, jpeg_paths)) <= TOLERANCE


def test_the_two_modes_differ_only_by_the_resize_arithmetic(photos: list[Image.Image]) -> None:
    processor = ImageProcessor()
    fast, pil = processor(photos, mode="fast"), processor(photos, mode="pil")
    difference = (fast - pil).abs()
    level = (1 / 255) / 0.5  # one uint8 step after normalisation with std 0.5
    assert 0 < difference.max().item() <= 2 * level + 1e-6
    assert (difference > level / 2).float().mean().item() < 0.01  # under 1% of values differ


@pytest.mark.parametrize("mode", ["fast", "pil"])
def test_grayscale_photo_matches_reference_with_rgb_conversion(mode: str) -> None:
    from skimage import data

    gray = [Image.fromarray(data.camera())]  # a real grayscale photo ("L")
    # Both references need do_convert_rgb=True for a one-channel PIL image (they then use
    # PIL's convert("RGB")); vitkit converts every input to RGB regardless.
    expected = reference_pixels(mode, {"do_convert_rgb": True}, gray)
    assert max_diff(ImageProcessor()(gray, mode=mode), expected) <= TOLERANCE


def rgba_photo() -> Image.Image:
    pixels = real_photos()["chelsea"]
    height, width = pixels.shape[:2]
    alpha = np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))
    return Image.fromarray(np.dstack([pixels, alpha]), mode="RGBA")


@pytest.mark.parametrize("mode", ["fast", "pil"])
def test_rgba_with_do_convert_rgb_composites_on_white_like_the_reference(mode: str) -> None:
    image = [rgba_photo()]
    config = {"do_convert_rgb": True}
    ours = ImageProcessor.from_dict(config)(image, mode=mode)
    assert max_diff(ours, reference_pixels(mode, config, image)) <= TOLERANCE


@pytest.mark.parametrize("mode", ["fast", "pil"])
def test_rgba_without_do_convert_rgb_drops_alpha_like_the_pipeline(mode: str) -> None:
    # transformers' image-classification pipeline runs load_image(), i.e. convert("RGB"), first.
    from transformers.image_utils import load_image

    image = rgba_photo()
    expected = reference_pixels(mode, {}, [load_image(image)])
    assert max_diff(ImageProcessor()([image], mode=mode), expected) <= TOLERANCE


@pytest.mark.parametrize("mode", ["fast", "pil"])
def test_arrays_and_tensors_match_the_reference_given_the_same(mode: str) -> None:
    arrays = list(real_photos().values())[:3]
    tensors = [torch.from_numpy(a).permute(2, 0, 1).contiguous() for a in arrays]
    processor = ImageProcessor()
    assert max_diff(processor(arrays, mode=mode), reference_pixels(mode, {}, arrays)) <= TOLERANCE
    assert max_diff(processor(tensors, mode=mode), reference_pixels(mode, {}, tensors)) <= TOLERANCE


def test_from_uint8_equals_call_and_accepts_a_batch(photos: list[Image.Image]) -> None:
    processor = ImageProcessor.from_dict(CONFIGS["bicubic-imagenet-nonsquare"])
    chw = [torch.from_numpy(np.array(p)).permute(2, 0, 1) for p in photos]
    expected = processor(photos, mode="fast")
    assert torch.equal(processor.from_uint8(chw), expected)
    same_size = torch.stack([chw[0], chw[0].flip(-1)])
    assert torch.equal(processor.from_uint8(same_size), processor(list(same_size), mode="fast"))
    with pytest.raises(VitkitError, match="uint8"):
        processor.from_uint8(same_size.float())


def test_one_image_and_a_4d_batch(photos: list[Image.Image]) -> None:
    processor = ImageProcessor()
    assert processor(photos[0]).shape == (1, 3, 224, 224)
    batch = torch.stack([torch.from_numpy(np.array(photos[0])).permute(2, 0, 1)] * 2)
    assert processor(batch).shape == (2, 3, 224, 224)


@pytest.mark.parametrize("mode", ["fast", "pil"])
def test_threads_give_the_same_batch(mode: str, jpeg_paths: list[str]) -> None:
    processor = ImageProcessor()
    assert torch.equal(
        processor(jpeg_paths, mode=mode, workers=3), processor(jpeg_paths, mode=mode)
    )


def test_load_batch_reports_bad_inputs_and_keeps_the_rest(
    jpeg_paths: list[str], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(Path(jpeg_paths[0]).read_bytes()[:2000])
    sources = [jpeg_paths[0], str(broken), str(tmp_path / "missing.png"), jpeg_paths[1]]
    processor = ImageProcessor()
    batch = processor.load_batch(sources, workers=2)
    assert batch.indices == [0, 3]
    assert set(batch.errors) == {1, 2}
    assert all(isinstance(e, ImageDecodeError) for e in batch.errors.values())
    assert str(broken) in str(batch.errors[1])
    assert torch.equal(batch.pixel_values, processor([jpeg_paths[0], jpeg_paths[1]]))
    with pytest.raises(ImageDecodeError, match=r"broken\.jpg"):
        processor(sources)


def test_config_round_trip_through_transformers(tmp_path: Path) -> None:
    config = CONFIGS["shortest-edge-crop-bicubic"] | {"image_mean": [0.1, 0.2, 0.3]}
    processor = ImageProcessor.from_dict(config)
    processor.save_pretrained(tmp_path)
    theirs = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    assert type(theirs).__name__ == "ViTImageProcessor"
    assert dict(theirs.size) == {"shortest_edge": 248}
    assert (
        theirs.resample == 3
        and theirs.do_center_crop
        and list(theirs.image_mean) == [0.1, 0.2, 0.3]
    )
    again = ImageProcessor.from_pretrained(tmp_path)
    assert again.to_dict() == processor.to_dict()
    assert again.size == (224, 224)
    # ... and a config transformers wrote reads back the same
    theirs.save_pretrained(tmp_path / "theirs")
    from_theirs = ImageProcessor.from_pretrained(tmp_path / "theirs")
    assert from_theirs.to_dict() == processor.to_dict()


def test_for_config_uses_hf_vit_defaults_at_the_model_size() -> None:
    processor = ImageProcessor.for_config(ViTConfig(image_size=(384, 192)))
    assert processor.size == (384, 192)
    default = transformers.ViTImageProcessor().to_dict()
    ours = processor.to_dict()
    for key in ("resample", "do_rescale", "rescale_factor", "do_normalize"):
        assert ours[key] == default[key]
    assert ours["image_mean"] == list(default["image_mean"])


def test_bad_configs_and_modes_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(VitkitError, match=r"preprocessor_config\.json"):
        ImageProcessor.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"depth": 3}}))
    with pytest.raises(VitkitError, match="size"):
        ImageProcessor.from_pretrained(tmp_path)
    with pytest.raises(VitkitError, match="resample"):
        ImageProcessor.from_dict({"resample": 9})
    with pytest.raises(VitkitError, match="mode"):
        ImageProcessor()([np.zeros((8, 8, 3), np.uint8)], mode="turbo")
    assert ImageProcessor().mode == "fast"


def test_jpeg_draft_is_an_explicit_approximation(jpeg_paths: list[str]) -> None:
    exact = ImageProcessor()
    assert not exact.jpeg_draft and "jpeg_draft" not in exact.to_dict()
    approximate = ImageProcessor(jpeg_draft=True)(jpeg_paths)  # 300..640 px photos -> 224
    difference = (approximate - exact(jpeg_paths)).abs()
    assert difference.max().item() > 0  # not the reference's numbers ...
    assert difference.mean().item() < 0.02  # ... but the same pictures


def test_prepare_uint8_then_normalize_is_the_fast_mode(jpeg_paths: list[str]) -> None:
    processor = ImageProcessor.from_dict(CONFIGS["bicubic-imagenet-nonsquare"])
    uint8 = torch.stack([processor.prepare_uint8(path) for path in jpeg_paths])
    assert uint8.dtype == torch.uint8 and uint8.shape == (len(jpeg_paths), 3, 160, 240)
    assert torch.equal(processor.normalize(uint8), processor(jpeg_paths, mode="fast"))


def test_aspect_preserving_size_without_crop(photos: list[Image.Image]) -> None:
    processor = ImageProcessor.from_dict({"size": {"shortest_edge": 96}})
    one = processor(photos[1])  # coffee, 400x600 -> 96x144
    assert one.shape == (1, 3, 96, 144)
    expected = reference_pixels("fast", {"size": {"shortest_edge": 96}}, [photos[1]])
    assert max_diff(one, expected) <= TOLERANCE
    with pytest.raises(VitkitError, match="different sizes"):
        processor(photos)  # square and landscape photos cannot share a batch


@pytest.mark.parametrize("resample", [0, 1, 2, 3])
def test_resize_and_crop_equal_torchvision_without_importing_it(resample: int) -> None:
    """fast_mode restates torchvision's resize / pad / crop (importing torchvision costs every
    command ~2 s of start-up); the pixels must stay torchvision's, layouts and batches included."""
    from torchvision.transforms.v2 import functional as tvF

    from vitkit.images.processor import fast_mode
    from vitkit.images.processor.sizes import SizeSpec

    coffee = torch.from_numpy(real_photos()["coffee"]).permute(2, 0, 1)  # channels-last view
    mode = tvF.InterpolationMode(fast_mode._INTERPOLATION[resample])
    inputs = {
        "channels-last": coffee,
        "contiguous": coffee.contiguous(),
        "batch": torch.stack([coffee, coffee.flip(-1)]),
        "float": coffee.float(),
    }
    for name, image in inputs.items():
        for height, width in ((224, 224), (100, 333), (600, 700)):
            ours = fast_mode.resize(image, SizeSpec(height=height, width=width), resample)
            theirs = tvF.resize(image, [height, width], interpolation=mode, antialias=True)
            assert ours.dtype == theirs.dtype and torch.equal(ours, theirs), (name, height)
    height, width = coffee.shape[-2:]  # 400 x 600
    for crop_h, crop_w in ((224, 224), (500, 700), (401, 603)):  # inside, padded, odd padding
        # transformers' TorchvisionBackend.center_crop, in torchvision calls
        pad_w, pad_h = max(crop_w - width, 0), max(crop_h - height, 0)
        padded = tvF.pad(coffee, [pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2])
        top, left = int((padded.shape[-2] - crop_h) / 2.0), int((padded.shape[-1] - crop_w) / 2.0)
        theirs = tvF.crop(padded, top, left, crop_h, crop_w)
        assert torch.equal(fast_mode.center_crop(coffee, crop_h, crop_w), theirs), crop_h
