"""Published MAE checkpoints load for embedding and fine-tuning: HF ``facebook/vit-mae-*``-style
directories through the registry (model_type "vit_mae", the encoder alone), and timm's ``.mae``
weights (encoder-only timm state dicts, as facebookresearch/mae's ``mae_pretrain_*.pth``)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import transformers

import vitkit
from vitkit.checkpoints import load_model, save_model
from vitkit.checkpoints.hf_mae import load_mae
from vitkit.cli import main
from vitkit.models.mae import MAE, MAEConfig, build_mae
from vitkit.models.vit import ViT

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.fixture(scope="module")
def facebook_style_mae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ViTMAEForPreTraining saved by transformers with the processor facebook ships
    (ImageNet mean/std, bicubic resize), weights perturbed so no default value hides a bug."""
    torch.manual_seed(0)
    config = transformers.ViTMAEConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        decoder_hidden_size=16,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
    )
    model = transformers.ViTMAEForPreTraining(config)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape) * 0.05)
    directory = tmp_path_factory.mktemp("vit-mae-tiny")
    model.save_pretrained(directory)
    processor = transformers.ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
    )
    processor.save_pretrained(directory)
    return directory


def test_registry_reads_an_mae_directory_as_its_encoder(facebook_style_mae: Path) -> None:
    loaded = load_model(facebook_style_mae)
    assert loaded.model_type == "vit_mae" and loaded.format == "hf"
    assert isinstance(loaded.model, ViT) and loaded.model.config.num_labels == 0
    assert loaded.preprocessing()["image_mean"] == IMAGENET_MEAN
    # save_model dispatches an MAE (encoder + decoder) to the MAE layout
    mae, _ = load_mae(facebook_style_mae)
    assert isinstance(mae, MAE)
    saved = save_model(mae, facebook_style_mae.parent / "resaved")
    assert load_model(saved).model_type == "vit_mae"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.ViTMAEForPreTraining.from_pretrained(saved)


def test_vitkit_embed_equals_transformers_vitmae_model(
    facebook_style_mae: Path, photo_dir: Path, tmp_path: Path
) -> None:
    """`vitkit embed --model MAE_DIR --pool cls` = transformers' ViTMAEModel [CLS] with nothing
    masked, on real photos through the checkpoint's own preprocessing."""
    out = tmp_path / "embeddings.npz"
    arguments = ["embed", str(photo_dir), "--model", str(facebook_style_mae), "--out", str(out)]
    assert main([*arguments, "--pool", "cls", "--device", "cpu"]) == 0
    saved = np.load(out)
    paths = [Path(p).name for p in saved["inputs"]]
    config = transformers.ViTMAEConfig.from_pretrained(facebook_style_mae)
    config.mask_ratio = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = transformers.ViTMAEModel.from_pretrained(facebook_style_mae, config=config)
    processor = transformers.ViTImageProcessor.from_pretrained(facebook_style_mae)
    from PIL import Image

    images = [Image.open(photo_dir / name).convert("RGB") for name in paths]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    in_order = torch.arange(16, dtype=torch.float32).expand(len(images), -1)
    with torch.no_grad():
        expected = reference.eval()(pixels, noise=in_order).last_hidden_state[:, 0]
    assert np.abs(saved["embeddings"] - expected.numpy()).max() <= 1e-4


def test_timm_mae_weights_embed_as_timm(tmp_path: Path) -> None:
    """timm's `.mae` weights (an encoder without head, as mae_pretrain_vit_base.pth, wrapped in
    {"model": ...}) give timm's own [CLS] features through vitkit.load."""
    torch.manual_seed(1)
    reference = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8
    ).eval()
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": reference.state_dict()}, path)
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = reference(pixels)  # num_classes=0: the pooled (CLS) features
        got = vitkit.load(str(path)).model.forward_embedding(pixels, "cls")
    assert (got - expected).abs().max() <= 1e-4


def test_mae_config_round_trips_through_config_json() -> None:
    from vitkit.models.config import ViTConfig

    config = MAEConfig(
        encoder=ViTConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            image_size=32,
            patch_size=8,
            layer_norm_eps=1e-6,
        ),
        decoder_hidden_size=16,
        decoder_num_hidden_layers=3,
        decoder_num_attention_heads=4,
        decoder_intermediate_size=48,
        mask_ratio=0.6,
        norm_pix_loss=True,
    )
    data = config.to_hf_dict()
    reference = transformers.ViTMAEConfig(**data)
    assert reference.decoder_num_hidden_layers == 3 and reference.mask_ratio == 0.6
    assert MAEConfig.from_hf_dict(reference.to_dict()) == config
    assert isinstance(build_mae(config), MAE)
