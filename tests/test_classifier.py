"""vitkit.load() + Classifier against transformers on the same checkpoint directory and real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import vitkit
from vitkit.errors import NoClassificationHeadError


def photo_paths(photo_dir: Path) -> list[str]:
    return sorted(str(p) for p in photo_dir.glob("*.jpg"))


def test_predict_equals_transformers_pipeline(tiny_hf_classifier: Path, photo_dir: Path) -> None:
    """Same labels and scores as pipeline('image-classification'), which runs the fast processor."""
    paths = photo_paths(photo_dir)
    pipe = transformers.pipeline(
        "image-classification", model=str(tiny_hf_classifier), device="cpu"
    )
    expected = pipe(paths, top_k=3)
    classifier = vitkit.load(tiny_hf_classifier, device="cpu", processor_mode="fast")
    ours = classifier.predict(paths, top_k=3)
    assert len(ours) == len(expected) == 6
    for mine, theirs in zip(ours, expected, strict=True):
        assert [p["label"] for p in mine] == [p["label"] for p in theirs]
        np.testing.assert_allclose(
            [p["score"] for p in mine], [p["score"] for p in theirs], atol=1e-4
        )


def test_pil_mode_logits_equal_transformers_pil_backend(
    tiny_hf_classifier: Path, photo_dir: Path
) -> None:
    from PIL import Image

    paths = photo_paths(photo_dir)
    reference = transformers.ViTForImageClassification.from_pretrained(tiny_hf_classifier).eval()
    processor = transformers.ViTImageProcessorPil.from_pretrained(tiny_hf_classifier)
    images = [Image.open(p).convert("RGB") for p in paths]
    with torch.no_grad():
        expected = reference(**processor(images, return_tensors="pt")).logits
    classifier = vitkit.load(tiny_hf_classifier, device="cpu", processor_mode="pil")
    ours = classifier.logits(classifier.prepare(paths))
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)


def test_embed_pools_equal_transformers_outputs(
    tiny_hf_feature_extractor: Path, photo_dir: Path
) -> None:
    paths = photo_paths(photo_dir)[:3]
    reference = transformers.ViTModel.from_pretrained(tiny_hf_feature_extractor).eval()
    classifier = vitkit.load(tiny_hf_feature_extractor, device="cpu")
    pixels = classifier.prepare(paths)
    with torch.no_grad():
        out = reference(pixel_values=pixels)
    np.testing.assert_allclose(
        classifier.embed(paths, pool="cls"), out.last_hidden_state[:, 0].numpy(), atol=1e-4
    )
    np.testing.assert_allclose(
        classifier.embed(paths, pool="pooler"), out.pooler_output.numpy(), atol=1e-4
    )
    np.testing.assert_allclose(
        classifier.embed(paths, pool="mean"),
        out.last_hidden_state[:, 1:].mean(1).numpy(),
        atol=1e-4,
    )
    assert classifier.embed(paths, pool="tokens").shape == (3, 1 + 16, 64)


def test_headless_checkpoint_predict_points_to_embed(tiny_hf_feature_extractor: Path) -> None:
    classifier = vitkit.load(tiny_hf_feature_extractor, device="cpu")
    assert not classifier.has_head
    with pytest.raises(NoClassificationHeadError, match="vitkit embed"):
        classifier.predict(np.zeros((64, 64, 3), dtype=np.uint8))


def test_predict_at_another_resolution_resamples(tiny_hf_classifier: Path, photo_dir: Path) -> None:
    classifier = vitkit.load(tiny_hf_classifier, device="cpu", image_size=96)
    assert classifier.config.image_hw == (96, 96)
    pixels = classifier.prepare(photo_paths(photo_dir)[:2])
    assert pixels.shape == (2, 3, 96, 96)
    top = classifier.predict_tensor(pixels, top_k=2)
    assert len(top) == 2 and top[0][0]["score"] >= top[0][1]["score"]


def test_imagenet_labels_fill_in_for_placeholder_ids(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=16,
        num_labels=1000,
    )
    transformers.ViTForImageClassification(config).save_pretrained(tmp_path)
    classifier = vitkit.load(tmp_path, device="cpu")
    assert classifier.labels[0] == "tench, Tinca tinca"
    assert len(classifier.labels) == 1000
