"""The convolutional stem (``patch_embed="conv"``, Xiao et al. 2021) of a from-scratch ViT:
the layers the paper describes, a saved directory vitkit reloads exactly (and that neither
transformers nor timm mistakes for a plain ViT), and the settings that cannot honour it
refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from vitkit.checkpoints import load_model, save_model
from vitkit.errors import TrainingError
from vitkit.models.config import preset
from vitkit.models.vit import ViT
from vitkit.training.checks import check_vit_settings
from vitkit.training.config import TrainConfig, resolve_recipe


def test_the_stem_halves_the_resolution_to_the_patch_size() -> None:
    model = ViT(preset("vit-tiny-patch8-32", num_hidden_layers=1, patch_embed="conv"))
    convs = [m for m in model.patch_embed.stem.modules() if isinstance(m, nn.Conv2d)]
    # 32 / 8 = 4 tokens a side: three 3x3 halvings, widths doubling up to half the model's
    assert [(c.kernel_size, c.stride, c.out_channels) for c in convs] == [
        ((3, 3), (2, 2), 24),
        ((3, 3), (2, 2), 48),
        ((3, 3), (2, 2), 96),
    ]
    assert model.patch_embed.proj.kernel_size == (1, 1)
    tokens = model.patch_embed(torch.randn(2, 3, 32, 32))
    assert tokens.shape == (2, 16, 192)
    # normalised per image: one image's tokens do not depend on the rest of the batch
    alone = model.patch_embed(torch.randn(1, 3, 32, 32).expand(2, -1, -1, -1).contiguous())
    torch.testing.assert_close(alone[0], alone[1])


def test_saved_directory_reloads_exactly_and_foreign_loaders_refuse_it(tmp_path: Path) -> None:
    import timm

    config = preset(
        "vit-tiny-patch4-16",
        num_hidden_layers=1,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        patch_embed="conv",
        id2label={0: "a", 1: "b"},
    )
    model = ViT(config).eval()
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m").model.eval()
    pixels = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_logits(pixels), model.forward_logits(pixels))
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["vitkit_config"]["patch_embed"] == "conv"
    with pytest.raises(RuntimeError, match="patch_embed"):  # timm fails, never silently
        timm.create_model(
            saved["architecture"],
            pretrained=True,
            pretrained_cfg_overlay={"file": str(tmp_path / "m" / "model.safetensors")},
            **saved["model_args"],
        )


def test_settings_that_cannot_honour_it_are_refused() -> None:
    with pytest.raises(ValueError, match="power of two"):
        preset("vit-tiny-patch14-28", patch_embed="conv")
    with pytest.raises(TrainingError, match="keeps its own patch embedding"):
        check_vit_settings(
            TrainConfig(data="d", out="o", model="google/vit-base-patch16-224", patch_embed="conv")
        )
    scratch = resolve_recipe(TrainConfig(data="d", out="o", from_scratch=True))
    assert scratch.patch_embed is not None  # the recipe decides the tokeniser
    assert resolve_recipe(TrainConfig(data="d", out="o", model="x")).patch_embed is None
