"""Fixtures shared across test files: real photos on disk and small checkpoints built by transformers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

# The skip census: a skip outside its short allowed list fails the run (tests/skip_census.py).
from skip_census import (  # noqa: F401
    pytest_collectreport,
    pytest_runtest_logreport,
    pytest_sessionfinish,
    pytest_terminal_summary,
)

# Tests must never reach a model hub: everything they load is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Two cores: keep torch from oversubscribing them when several workers run.
torch.set_num_threads(min(2, torch.get_num_threads()))


def real_photos() -> dict[str, np.ndarray]:
    """Real RGB photos bundled with scikit-image and scikit-learn (no network needed)."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    return {
        "astronaut": data.astronaut(),
        "coffee": data.coffee(),
        "chelsea": data.chelsea(),
        "histology": data.immunohistochemistry(),
        "china": china,
        "flower": flower,
    }


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of real JPEG photos."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    for name, pixels in real_photos().items():
        Image.fromarray(pixels).save(folder / f"{name}.jpg", quality=92)
    return folder


@pytest.fixture(scope="session")
def tiny_hf_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random ViTForImageClassification saved by transformers itself (with processor config)."""
    import transformers

    torch.manual_seed(0)
    labels = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead"]
    config = transformers.ViTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=64,
        patch_size=16,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    model = transformers.ViTForImageClassification(config).eval()
    # Random init gives near-uniform logits; a scaled head makes top-k orderings meaningful.
    with torch.no_grad():
        model.classifier.weight.normal_(0, 1.0)
    directory = tmp_path_factory.mktemp("tiny-vit")
    model.save_pretrained(directory)
    processor = transformers.ViTImageProcessor(size={"height": 64, "width": 64})
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_hf_feature_extractor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A headless ViTModel with a pooler, like google/vit-large-patch16-224-in21k."""
    import transformers

    torch.manual_seed(1)
    config = transformers.ViTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=64,
        patch_size=16,
    )
    model = transformers.ViTModel(config, add_pooling_layer=True).eval()
    directory = tmp_path_factory.mktemp("tiny-vit-in21k")
    model.save_pretrained(directory)
    transformers.ViTImageProcessor(size={"height": 64, "width": 64}).save_pretrained(directory)
    return directory
