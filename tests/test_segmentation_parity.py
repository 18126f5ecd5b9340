"""Segmentation checkpoints against transformers on the same weights: DPTForSemanticSegmentation
read by vitkit (logits, DPTImageProcessor, post-processed masks) and vitkit's DPT read by
transformers; heads on other backbones round-trip through vitkit's own layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from conftest import real_photos
from vitkit.checkpoints import load_model, save_model
from vitkit.images.processor.dense import DenseProcessor
from vitkit.inference.segmentation import SegmentationRunner
from vitkit.models.config import ViTConfig
from vitkit.models.dpt import DPTHeadConfig
from vitkit.models.segmentation import Segmenter, SegmenterConfig

LABELS = {0: "background", 1: "stroma", 2: "tumour"}


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Weights away from their initial values and BatchNorm statistics that matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.add_(noise * 0.05)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator))
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)


def calibrate_batch_norm(model: Any, processor: Any) -> None:
    """BatchNorm statistics of real photos, so that the heads' outputs vary across pixels
    (random statistics would leave one class everywhere and the mask tests toothless)."""
    photos = [Image.fromarray(p) for p in real_photos().values()]
    pixels = processor(images=photos, return_tensors="pt")["pixel_values"]
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the one batch
    model.train()
    with torch.no_grad():
        model(pixel_values=pixels)
    model.eval()


def hf_dpt(directory: Path, **changes: Any) -> Any:
    """A small random DPTForSemanticSegmentation (ViT encoder) saved by transformers."""
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=64,
        patch_size=16,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()},
    )
    settings.update(changes)
    torch.manual_seed(0)
    model = transformers.DPTForSemanticSegmentation(transformers.DPTConfig(**settings)).eval()
    randomise(model, 1)
    calibrate_batch_norm(model, transformers.DPTImageProcessor(size={"height": 64, "width": 64}))
    model.save_pretrained(directory)
    processor = transformers.DPTImageProcessor(size={"height": 64, "width": 64})
    processor.save_pretrained(directory)
    return model


@pytest.fixture(scope="module")
def dpt_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    directory = tmp_path_factory.mktemp("dpt") / "dpt"
    return directory, hf_dpt(directory)


def test_dpt_logits_match_transformers_at_two_sizes(dpt_dir: tuple[Path, Any]) -> None:
    directory, reference = dpt_dir
    loaded = load_model(directory)
    assert loaded.model_type == "dpt" and loaded.model.capabilities.dense
    photos = [Image.fromarray(p) for p in list(real_photos().values())[:2]]
    for size in (64, 96):  # the processor's size, then position embeddings resized
        hf_processor = transformers.DPTImageProcessor(size={"height": size, "width": size})
        pixels = hf_processor(images=photos, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            expected = reference(pixel_values=pixels).logits
            ours = loaded.model.forward_logits(pixels)
        assert ours.shape == expected.shape == (2, 3, size, size)
        assert torch.allclose(ours, expected, atol=1e-4, rtol=0), (ours - expected).abs().max()


@pytest.mark.parametrize(
    "settings",
    [
        {"size": {"height": 64, "width": 64}},
        {"size": {"height": 96, "width": 80}, "keep_aspect_ratio": True, "ensure_multiple_of": 16},
        {"size": {"height": 70, "width": 70}, "do_pad": True, "size_divisor": 32, "resample": 2},
    ],
)
def test_dense_processor_equals_dpt_image_processor(settings: dict[str, Any]) -> None:
    reference = transformers.DPTImageProcessor(**settings)
    ours = DenseProcessor.from_dict(reference.to_dict())
    for name, pixels in real_photos().items():
        expected = reference(images=Image.fromarray(pixels), return_tensors="pt")["pixel_values"]
        batch = ours(pixels)
        assert batch.original_sizes == [pixels.shape[:2]]
        assert torch.equal(batch.pixel_values, expected), name


def test_masks_equal_transformers_post_processing(dpt_dir: tuple[Path, Any]) -> None:
    directory, reference = dpt_dir
    runner = SegmentationRunner.from_pretrained(str(directory))
    hf_processor = transformers.DPTImageProcessor.from_pretrained(directory)
    for name in ("china", "histology"):
        photo = real_photos()[name]
        inputs = hf_processor(images=Image.fromarray(photo), return_tensors="pt")
        with torch.no_grad():
            outputs = reference(**inputs)
        expected = hf_processor.post_process_semantic_segmentation(
            outputs, target_sizes=[photo.shape[:2]]
        )[0]
        (result,) = runner.segment(photo)
        assert result.mask.shape == photo.shape[:2]
        assert np.array_equal(result.mask, expected.numpy()), name
        assert len(np.unique(result.mask)) > 1  # a real test: more than one class predicted
        assert result.labels == list(LABELS.values())


def test_vitkit_dpt_loads_in_transformers_with_the_same_logits(tmp_path: Path) -> None:
    config = SegmenterConfig(
        backbone=ViTConfig(
            hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
            image_size=32, patch_size=8,
        ),
        head="dpt",
        id2label=LABELS,
        dpt=DPTHeadConfig(
            backbone_out_indices=(0, 1, 2, 3), neck_hidden_sizes=(8, 8, 16, 16), fusion_hidden_size=16
        ),
    )  # fmt: skip
    torch.manual_seed(0)
    model = Segmenter(config)
    randomise(model, 2)
    model.eval()
    assert config.model_type == "dpt"
    directory = save_model(model, tmp_path / "ours")
    reference = transformers.DPTForSemanticSegmentation.from_pretrained(directory).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference(pixel_values=pixels).logits
        assert torch.allclose(model.forward_logits(pixels), expected, atol=1e-4, rtol=0)
    assert transformers.AutoImageProcessor.from_pretrained(directory).size == {
        "height": 32,
        "width": 32,
    }


@pytest.mark.parametrize("head", ["dpt", "linear"])
def test_heads_on_other_backbones_round_trip_in_vitkit_layout(head: str, tmp_path: Path) -> None:
    backbone = ViTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=48,
        image_size=28, patch_size=14, layer_norm_eps=1e-6, layerscale_value=1.0,
        num_register_tokens=2, use_swiglu_ffn=True, hidden_act="silu", family="DINOv2",
    )  # fmt: skip
    config = SegmenterConfig(backbone=backbone, head=head, id2label=LABELS, linear_layers=2)
    torch.manual_seed(0)
    model = Segmenter(config)
    randomise(model, 3)
    model.eval()
    assert config.model_type == "vitkit_segmenter"
    directory = save_model(model, tmp_path / head)
    loaded = load_model(directory)
    assert loaded.model_type == "vitkit_segmenter"
    pixels = torch.randn(2, 3, 42, 28)
    with torch.no_grad():
        assert torch.equal(loaded.model.forward_logits(pixels), model.forward_logits(pixels))
    assert loaded.model.config.backbone.num_register_tokens == 2


def test_predict_command_writes_the_masks_transformers_gives(
    dpt_dir: tuple[Path, Any], photo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vitkit.cli import main

    directory, reference = dpt_dir
    photos = [photo_dir / "china.jpg", photo_dir / "histology.jpg"]
    out = tmp_path / "masks"
    argv = ["predict", "--model", str(directory), "--masks-out", str(out), "--format", "json"]
    assert main([*argv, *map(str, photos), str(tmp_path / "missing.jpg")]) == 1
    records = json.loads(capsys.readouterr().out)
    assert "no such file" in records[2]["error"]
    hf_processor = transformers.DPTImageProcessor.from_pretrained(directory)
    for photo, record in zip(photos, records, strict=False):
        image = Image.open(photo).convert("RGB")
        with torch.no_grad():
            outputs = reference(**hf_processor(images=image, return_tensors="pt"))
        expected = hf_processor.post_process_semantic_segmentation(
            outputs, target_sizes=[(image.height, image.width)]
        )[0].numpy()
        written = Image.open(record["mask"])
        assert written.mode == "P" and np.array_equal(np.asarray(written), expected)
        assert sum(row["pixels"] for row in record["areas"]) == expected.size
        assert Image.open(record["overlay"]).size[0] == image.width  # legend strip below
    assert (out / "areas.csv").read_text().count("\n") == 1 + 2 * 3 + 1
    assert main(["info", str(directory)]) == 0
    assert (
        "3 classes: background, stroma, tumour; per pixel (segmentation)" in capsys.readouterr().out
    )
    # options that do not fit the model are refused, naming them
    assert main([*argv[:3], str(photos[0])]) == 2  # no --masks-out
    assert main([*argv, "--top-k", "3", str(photos[0])]) == 2
    assert "--top-k" in capsys.readouterr().err


def test_mask_options_refused_for_a_classifier(
    tiny_hf_classifier: Path, photo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vitkit.cli import main

    argv = ["predict", "--model", str(tiny_hf_classifier), str(photo_dir / "china.jpg")]
    assert main([*argv, "--masks-out", str(tmp_path)]) == 2
    assert "--masks-out: for segmentation models" in capsys.readouterr().err


def test_service_segments_as_transformers_post_processes(
    dpt_dir: tuple[Path, Any], tiny_hf_classifier: Path, photo_dir: Path
) -> None:
    import base64
    import io
    import time

    from fastapi.testclient import TestClient

    import vitkit
    from vitkit.serve import ServeSettings, create_app

    directory, reference = dpt_dir
    models = {
        "dpt": vitkit.load(directory, device="cpu"),
        "vit": vitkit.load(tiny_hf_classifier, device="cpu"),
    }
    app = create_app(models, ServeSettings(max_batch_size=2))
    photo = (photo_dir / "chelsea.jpg").read_bytes()
    image = Image.open(io.BytesIO(photo)).convert("RGB")
    hf_processor = transformers.DPTImageProcessor.from_pretrained(directory)
    with torch.no_grad():
        outputs = reference(**hf_processor(images=image, return_tensors="pt"))
    expected = hf_processor.post_process_semantic_segmentation(
        outputs, target_sizes=[(image.height, image.width)]
    )[0].numpy()
    with TestClient(app, raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        answer = client.post("/v1/segment?model=dpt", files={"image": ("c.jpg", photo)})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png_base64"]))))
        assert np.array_equal(mask, expected) and body["size"] == list(expected.shape)
        assert sum(row["pixels"] for row in body["classes"]) == expected.size
        png = client.post("/v1/segment?model=dpt&format=png", content=photo)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.content))), expected)
        # each route answers its own kind of model only
        refused = client.post("/v1/predict?model=dpt", files={"files": ("c.jpg", photo)})
        assert refused.status_code == 400 and "/v1/segment" in refused.text
        refused = client.post("/v1/segment?model=vit", content=photo)
        assert refused.status_code == 400 and "/v1/predict" in refused.text
        pixels = hf_processor(images=image, return_tensors="np")["pixel_values"].astype("float32")
        request = {
            "inputs": [
                {
                    "name": "pixel_values", "shape": list(pixels.shape), "datatype": "FP32",
                    "data": pixels.ravel().tolist(),
                }
            ],
            "outputs": [{"name": "segmentation"}],
        }  # fmt: skip
        v2 = client.post("/v2/models/dpt/infer", json=request)
        assert v2.status_code == 200, v2.text
        output = v2.json()["outputs"][0]
        assert output["shape"] == [1, 64, 64] and output["datatype"] == "UINT8"
        with torch.no_grad():
            at_input = reference(pixel_values=torch.from_numpy(pixels)).logits.argmax(1)
        assert np.array_equal(np.asarray(output["data"]).reshape(1, 64, 64), at_input.numpy())
