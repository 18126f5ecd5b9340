"""DINOv2 and the pathology foundation ViTs: vitkit equals timm / transformers on the same weights.

Each reference model is built at test time by timm or transformers with the published
architecture's features (LayerScale, registers, SwiGLUPacked + SiLU, no_embed_class,
dynamic_img_size), shrunk in depth and width, its weights randomised (LayerScale included, so
that no branch is silently near zero), saved, loaded by vitkit, and run on real photos at the
native size and at one other size. Tokens, every block's hidden state and the embedding agree
within 1e-4.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file

from vitkit.checkpoints import load_model

TOLERANCE = 1e-4


def photos(height: int, width: int) -> torch.Tensor:
    """Three real photos (scikit-image, one of them histology), resized, ImageNet-normalised."""
    from skimage import data

    images = [data.immunohistochemistry(), data.astronaut(), data.chelsea()]
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    batch = [
        F.interpolate(
            torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255,
            size=(height, width),
            mode="bicubic",
            antialias=True,
        )[0]
        for image in images
    ]
    return (torch.stack(batch) - mean) / std


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial values everywhere: biases, LayerNorm shifts, LayerScale, tokens."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if "ls" in name or "layer_scale" in name or "lambda1" in name:
                parameter.copy_(0.5 + 0.2 * noise)  # LayerScale: the branches must matter
            else:
                parameter.add_(noise * (0.05 if parameter.dim() > 1 else 0.2))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


def timm_reference(name: str, seed: int = 0, **kwargs: Any) -> Any:
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()
    randomise(model, seed)
    return model


def save_timm(model: Any, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def timm_hidden_states(model: Any, pixels: torch.Tensor) -> list[torch.Tensor]:
    """timm's per-block outputs (before the final norm), by running its own modules."""
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(pixels))))
    states = []
    for block in model.blocks:
        x = block(x)
        states.append(x)
    return states


def assert_matches_timm(reference: Any, ours: Any, pixels: torch.Tensor) -> None:
    with torch.no_grad():
        expected_tokens = reference.forward_features(pixels)
        expected_embedding = reference.forward_head(expected_tokens, pre_logits=True)
        expected_states = timm_hidden_states(reference, pixels)
        output = ours(pixels, output_hidden_states=True)
        embedding = ours.pool(output.last_hidden_state)
    assert max_diff(output.last_hidden_state, expected_tokens) <= TOLERANCE
    assert max_diff(embedding, expected_embedding) <= TOLERANCE
    for mine, theirs in zip(output.hidden_states[1:], expected_states, strict=True):
        assert max_diff(mine, theirs) <= TOLERANCE


# ---- timm: UNI, UNI2-h / Virchow, DINOv2-g ----------------------------------------------
def test_uni_build_layerscale(tmp_path: Path) -> None:
    """UNI: timm vit_large_patch16_224 with init_values=1e-5 (width and depth shrunk)."""
    reference = timm_reference(
        "vit_large_patch16_224", embed_dim=256, depth=2, num_heads=4, init_values=1e-5
    )
    path = save_timm(reference, tmp_path / "uni.safetensors")
    loaded = load_model(path).model
    assert loaded.config.layerscale_value is not None
    assert loaded.config.default_pool == "cls"
    assert_matches_timm(reference, loaded, photos(224, 224))
    # Another size, resampled at load as timm resamples when it loads at another img_size.
    from timm.models.vision_transformer import checkpoint_filter_fn

    resized = timm_reference(
        "vit_large_patch16_224", embed_dim=256, depth=2, num_heads=4, init_values=1e-5,
        img_size=288,
    )  # fmt: skip
    resized.load_state_dict(checkpoint_filter_fn(load_file(path), resized))
    assert_matches_timm(resized, load_model(path, image_size=288).model, photos(288, 288))


@pytest.mark.parametrize(
    ("registers", "no_embed_class"), [(8, True), (4, False)], ids=["uni2-h", "virchow2"]
)
def test_vit_h14_registers_swiglu_silu(
    registers: int, no_embed_class: bool, tmp_path: Path
) -> None:
    """UNI2-h's build (8 registers, positions for the patches only) and Virchow2's (4
    registers with positions of their own): SwiGLUPacked + SiLU, dynamic_img_size, as their
    model cards create them, in timm's Hub layout (config.json model_args)."""
    reference = timm_reference(
        "vit_huge_patch14_224",
        embed_dim=192,
        depth=2,
        num_heads=3,
        init_values=1e-5,
        reg_tokens=registers,
        no_embed_class=no_embed_class,
        mlp_layer=timm.layers.SwiGLUPacked,
        act_layer=torch.nn.SiLU,
        mlp_ratio=5.3375,
        dynamic_img_size=True,
    )
    # The published layout: mlp_layer / act_layer are classes, so the cards pass them in code
    # and config.json's model_args leave them out.
    hub = tmp_path / "hub"
    hub.mkdir()
    model_args = {
        "img_size": 224, "patch_size": 14, "embed_dim": 192, "depth": 2, "num_heads": 3,
        "init_values": 1e-5, "mlp_ratio": 5.3375, "num_classes": 0, "reg_tokens": registers,
        "no_embed_class": no_embed_class, "dynamic_img_size": True, "global_pool": "",
    }  # fmt: skip
    (hub / "config.json").write_text(
        json.dumps({"architecture": "vit_huge_patch14_224", "model_args": model_args})
    )
    save_timm(reference, hub / "model.safetensors")
    loaded = load_model(hub).model
    config = loaded.config
    assert (config.num_register_tokens, config.no_embed_class) == (registers, no_embed_class)
    assert config.use_swiglu_ffn and config.hidden_act == "silu" and config.dynamic_img_size
    for size in (224, 182):  # native, and another size resampled at call time (timm's rule)
        pixels = photos(size, size)
        assert_matches_timm(reference, loaded, pixels)
        with torch.no_grad():  # Virchow's embedding: [CLS] + mean of the patch tokens
            tokens = reference.forward_features(pixels)
            virchow = torch.cat([tokens[:, 0], tokens[:, 1 + registers :].mean(1)], dim=-1)
            ours = loaded.pool(loaded.forward_features(pixels)[0], "cls+mean")
        assert max_diff(ours, virchow) <= TOLERANCE


def test_vit_giant_dinov2_shape(tmp_path: Path) -> None:
    """timm vit_giant_patch14_dinov2: LayerScale + SwiGLUPacked (mlp_ratio 2.66667 * 2)."""
    reference = timm_reference(
        "vit_giant_patch14_dinov2", embed_dim=192, depth=2, num_heads=3, img_size=224
    )
    path = save_timm(reference, tmp_path / "giant.safetensors")
    loaded = load_model(path).model
    assert loaded.config.use_swiglu_ffn and loaded.config.intermediate_size == 512
    assert_matches_timm(reference, loaded, photos(224, 224))
    from timm.models.vision_transformer import checkpoint_filter_fn

    resized = timm_reference(
        "vit_giant_patch14_dinov2", embed_dim=192, depth=2, num_heads=3, img_size=280
    )
    resized.load_state_dict(checkpoint_filter_fn(load_file(path), resized))
    assert_matches_timm(resized, load_model(path, image_size=280).model, photos(280, 280))


def test_avg_pool_fc_norm_no_class_token(tmp_path: Path) -> None:
    """global_pool avg + fc_norm, with and without [CLS]: the embedding is timm's pre-logits."""
    for class_token in (True, False):
        reference = timm_reference(
            "vit_small_patch16_224", depth=2, global_pool="avg", class_token=class_token,
            img_size=112,
        )  # fmt: skip
        path = save_timm(reference, tmp_path / f"avg_{class_token}.safetensors")
        loaded = load_model(path).model
        assert loaded.config.fc_norm and loaded.config.global_pool == "avg"
        assert_matches_timm(reference, loaded, photos(112, 112))


# ---- transformers: Dinov2Model, Dinov2WithRegistersModel -----------------------------------
def hf_dinov2(kind: str, directory: Path, **changes: Any) -> Any:
    settings: dict[str, Any] = dict(
        hidden_size=96, num_hidden_layers=2, num_attention_heads=3, image_size=98, patch_size=14
    )
    settings.update(changes)
    if kind == "registers":
        model = transformers.Dinov2WithRegistersModel(
            transformers.Dinov2WithRegistersConfig(num_register_tokens=4, **settings)
        )
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**settings))
    model.eval()
    randomise(model, seed=3)
    model.save_pretrained(directory)
    return model


@pytest.mark.parametrize(
    ("kind", "changes"),
    [("plain", {}), ("plain", {"use_swiglu_ffn": True}), ("registers", {})],
    ids=["dinov2", "dinov2-swiglu", "dinov2-registers"],
)
def test_transformers_dinov2(kind: str, changes: dict[str, Any], tmp_path: Path) -> None:
    reference = hf_dinov2(kind, tmp_path / "dinov2", **changes)
    loaded = load_model(tmp_path / "dinov2")
    assert loaded.model_type == "dinov2" and loaded.model.config.family.startswith("DINOv2")
    model = loaded.model
    for height, width in ((98, 98), (126, 168)):  # native; another size (transformers' rule)
        pixels = photos(height, width)
        with torch.no_grad():
            expected = reference(pixel_values=pixels, output_hidden_states=True)
            ours = model(pixels, output_hidden_states=True)
            embedding = model.pool(ours.last_hidden_state)  # the family's default: pooler
        assert max_diff(ours.last_hidden_state, expected.last_hidden_state) <= TOLERANCE
        assert max_diff(ours.pooler_output, expected.pooler_output) <= TOLERANCE
        assert max_diff(embedding, expected.pooler_output) <= TOLERANCE
        for mine, theirs in zip(ours.hidden_states, expected.hidden_states, strict=True):
            assert max_diff(mine, theirs) <= TOLERANCE
    # Loaded at another size (position embeddings resampled once, by transformers' rule).
    resized = load_model(tmp_path / "dinov2", image_size=(126, 168)).model
    with torch.no_grad():
        pixels = photos(126, 168)
        expected_tokens = reference(pixel_values=pixels).last_hidden_state
        assert max_diff(resized(pixels).last_hidden_state, expected_tokens) <= TOLERANCE
