"""timm state dicts: vitkit equals timm's VisionTransformer on the same weights.

Models come from ``timm.create_model(..., pretrained=False)``, their state dicts are saved to
.safetensors / .pth inside the test, and inputs are real photos. fp32 max abs diff <= 1e-4.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from vitkit.checkpoints import CheckpointError, load_model

TOLERANCE = 1e-4


def photos(height: int, width: int, count: int = 2) -> torch.Tensor:
    """Real photos (scikit-image), resized and normalised to [-1, 1]."""
    from skimage import data

    images = [data.astronaut(), data.coffee(), data.chelsea()][:count]
    resized = [
        F.interpolate(
            torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255,
            size=(height, width),
            mode="bicubic",
            antialias=True,
        )
        for image in images
    ]
    return (torch.cat(resized) - 0.5) / 0.5


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial values everywhere (timm zero-inits biases, the head and LayerNorm shifts)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.add_(noise * (0.05 if parameter.dim() > 1 else 0.2))


def timm_model(name: str, seed: int = 0, **kwargs: Any) -> Any:
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    randomise(model, seed)
    return model


def save_safetensors(model: Any, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def test_vit_base_patch16_384_full_size(tmp_path: Path) -> None:
    reference = timm_model("vit_base_patch16_384")
    path = save_safetensors(reference, tmp_path / "vit_base_patch16_384.safetensors")
    loaded = load_model(path)
    config = loaded.model.config
    assert loaded.format == "timm"
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (
        768,
        12,
        12,
    )
    assert (config.image_size, config.patch_size, config.num_labels) == (384, 16, 1000)
    assert config.layer_norm_eps == 1e-6
    pixels = photos(384, 384, count=1)
    with torch.no_grad():
        tokens = reference.forward_features(pixels)
        expected = reference.forward_head(tokens)
        ours = loaded.model(pixels)
    assert max_diff(ours.last_hidden_state, tokens) <= TOLERANCE
    assert max_diff(ours.logits, expected) <= TOLERANCE


SMALL_MODELS = {
    # name, create_model kwargs, file suffix
    "small_patch32_pth": ("vit_small_patch32_224", dict(depth=2, num_classes=7), ".pth"),
    "tiny_no_qkv_bias": ("vit_tiny_patch16_224", dict(depth=2, qkv_bias=False), ".safetensors"),
    "tiny_headless_bin": ("vit_tiny_patch16_224", dict(depth=2, num_classes=0), ".bin"),
    "non_square": ("vit_tiny_patch16_224", dict(depth=2, img_size=(96, 160)), ".safetensors"),
}


@pytest.mark.parametrize("case", list(SMALL_MODELS))
def test_small_timm_models(case: str, tmp_path: Path) -> None:
    name, kwargs, suffix = SMALL_MODELS[case]
    reference = timm_model(name, **kwargs)
    path = tmp_path / f"{name}{suffix}"
    if suffix == ".safetensors":
        save_safetensors(reference, path)
    else:
        torch.save(reference.state_dict(), path)
    size = kwargs.get("img_size", 224)
    height, width = size if isinstance(size, tuple) else (size, size)
    if isinstance(size, tuple):
        # A non-square grid cannot be read off the pos_embed length: the caller names the size.
        with pytest.raises(CheckpointError, match="not a square grid"):
            load_model(path)
        model = load_model(path, image_size=size).model
    else:
        model = load_model(path).model
    pixels = photos(height, width)
    with torch.no_grad():
        expected = reference(pixels)
        ours = model(pixels)
    if reference.num_classes:
        assert max_diff(ours.logits, expected) <= TOLERANCE
    else:
        assert ours.logits is None
        assert max_diff(ours.last_hidden_state[:, 0], expected) <= TOLERANCE


@pytest.mark.parametrize("new_size", [288, (224, 320)])
def test_loaded_at_another_size_equals_timm_resampling(
    new_size: int | tuple[int, int], tmp_path: Path
) -> None:
    reference = timm_model("vit_tiny_patch16_224", depth=2)
    path = save_safetensors(reference, tmp_path / "vit_tiny_patch16_224.safetensors")
    # timm's own load-time resampling: a model built at the new size, the saved state dict fed
    # through timm's checkpoint_filter_fn (what timm.create_model(pretrained=True) does).
    from timm.models.vision_transformer import checkpoint_filter_fn

    resized = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=new_size, depth=2
    ).eval()
    resized.load_state_dict(checkpoint_filter_fn(load_file(path), resized))
    loaded = load_model(path, image_size=new_size)
    height, width = new_size if isinstance(new_size, tuple) else (new_size, new_size)
    assert loaded.model.config.image_hw == (height, width)
    assert max_diff(loaded.model.pos_embed, resized.pos_embed) <= 1e-6
    pixels = photos(height, width)
    with torch.no_grad():
        assert max_diff(loaded.model(pixels).logits, resized(pixels)) <= TOLERANCE


def test_head_count_override_for_non_standard_widths(tmp_path: Path) -> None:
    # Width 192 is ViT-Ti (3 heads) by timm's convention; this model has 6.
    reference = timm_model("vit_tiny_patch16_224", depth=2, num_heads=6)
    path = save_safetensors(reference, tmp_path / "six_heads.safetensors")
    pixels = photos(224, 224)
    with torch.no_grad():
        expected = reference(pixels)
        default = load_model(path).model
        overridden = load_model(path, num_attention_heads=6).model
        assert default.config.num_attention_heads == 3
        assert max_diff(default(pixels).logits, expected) > TOLERANCE  # heads matter
        assert max_diff(overridden(pixels).logits, expected) <= TOLERANCE


def test_pre_logits_representation_layer(tmp_path: Path) -> None:
    """timm dropped ``pre_logits`` (the in21k representation layer); older timm state dicts have
    ``pre_logits.fc``. Reference: timm's own modules, with the layer applied by hand."""
    reference = timm_model("vit_tiny_patch16_224", depth=2, num_classes=11)
    generator = torch.Generator().manual_seed(5)
    pre_logits = torch.nn.Linear(192, 192)
    with torch.no_grad():
        pre_logits.weight.copy_(torch.randn(192, 192, generator=generator) * 0.05)
        pre_logits.bias.copy_(torch.randn(192, generator=generator) * 0.2)
    state = dict(reference.state_dict())
    state["pre_logits.fc.weight"] = pre_logits.weight.detach().clone()
    state["pre_logits.fc.bias"] = pre_logits.bias.detach().clone()
    path = tmp_path / "with_pre_logits.pth"
    torch.save({"state_dict": state}, path)  # also: the wrapper timm's train script writes
    loaded = load_model(path)
    assert loaded.model.config.classifier_uses_pooler
    pixels = photos(224, 224)
    with torch.no_grad():
        cls = reference.forward_features(pixels)[:, 0]
        expected = reference.head(torch.tanh(pre_logits(cls)))
        ours = loaded.model(pixels)
    assert max_diff(ours.logits, expected) <= TOLERANCE
    assert ours.pooler_output is not None
    assert max_diff(ours.pooler_output, torch.tanh(pre_logits(cls))) <= TOLERANCE


def test_timm_hub_directory(tmp_path: Path) -> None:
    from timm.models._hub import save_for_hf

    reference = timm_model("vit_tiny_patch16_224", depth=2, num_classes=3)
    save_for_hf(reference, str(tmp_path / "timm-dir"), safe_serialization=True)
    loaded = load_model(tmp_path / "timm-dir")
    assert loaded.format == "timm"
    processor = loaded.processor_config
    assert processor is not None
    data_config = timm.data.resolve_data_config({}, model=reference)
    assert processor["crop_size"] == {"height": 224, "width": 224}
    assert processor["size"] == {"shortest_edge": int(224 / data_config["crop_pct"])}
    assert processor["image_mean"] == list(data_config["mean"])
    pixels = photos(224, 224)
    with torch.no_grad():
        assert max_diff(loaded.model(pixels).logits, reference(pixels)) <= TOLERANCE


def test_training_checkpoints_ddp_prefix_and_wrappers(tmp_path: Path) -> None:
    import argparse

    reference = timm_model("vit_tiny_patch16_224", depth=1, num_classes=4)
    ddp = tmp_path / "ddp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in reference.state_dict().items()}}, ddp)
    # What timm's train script (CheckpointSaver) writes, command-line args included.
    trained = tmp_path / "model_best.pth.tar"
    torch.save(
        {
            "epoch": 3,
            "arch": "vit_tiny_patch16_224",
            "state_dict": reference.state_dict(),
            "args": argparse.Namespace(lr=1e-3, model="vit_tiny_patch16_224"),
            "version": 2,
            "metric": 71.5,
        },
        trained,
    )
    pixels = photos(224, 224)
    with torch.no_grad():
        expected = reference(pixels)
        for path in (ddp, trained):
            assert max_diff(load_model(path).model(pixels).logits, expected) <= TOLERANCE


# ---- refusals and clear errors ------------------------------------------------------------
class NotATensor:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("this would run on load",))


def test_pickles_with_code_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"patch_embed.proj.weight": torch.zeros(1), "payload": NotATensor()}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pth: refused to load"):
        load_model(path)


def test_not_a_checkpoint_and_not_a_vit(tmp_path: Path) -> None:
    text = tmp_path / "readme.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"readme\.pth: not a PyTorch checkpoint"):
        load_model(text)
    resnet = tmp_path / "resnet.safetensors"
    save_file(
        {"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}, str(resnet)
    )
    with pytest.raises(CheckpointError, match=r"resnet\.safetensors: not a ViT checkpoint"):
        load_model(resnet)
    hf_weights = tmp_path / "model.safetensors"
    save_file(
        {"vit.embeddings.patch_embeddings.projection.weight": torch.zeros(8, 3, 16, 16)},
        str(hf_weights),
    )
    with pytest.raises(CheckpointError, match=r"without their config\.json"):
        load_model(hf_weights)


def test_unsupported_timm_variants_are_listed(tmp_path: Path) -> None:
    # QK-norm (a LayerNorm on queries and keys) is no vitkit feature: each extra key is named.
    reference = timm_model("vit_tiny_patch16_224", depth=2, qk_norm=True)
    path = save_safetensors(reference, tmp_path / "qk_norm.safetensors")
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    message = str(error.value)
    assert "qk_norm.safetensors" in message and "unexpected keys (8)" in message
    assert "blocks.0.attn.q_norm.weight" in message and "blocks.1.attn.k_norm.bias" in message


def test_truncated_file(tmp_path: Path) -> None:
    reference = timm_model("vit_tiny_patch16_224", depth=1)
    path = save_safetensors(reference, tmp_path / "cut.safetensors")
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors: not a readable safetensors"):
        load_model(path)


def test_model_survives_its_file_being_overwritten(tmp_path: Path) -> None:
    # safetensors memory-maps; a model whose weights still pointed into the file would crash
    # (SIGBUS) once another save truncated it, e.g. re-saving into the same directory.
    reference = timm_model("vit_tiny_patch16_224", depth=1, num_classes=3)
    path = save_safetensors(reference, tmp_path / "weights.safetensors")
    model = load_model(path).model
    path.write_bytes(b"")
    pixels = photos(224, 224, count=1)
    with torch.no_grad():
        assert max_diff(model(pixels).logits, reference(pixels)) <= TOLERANCE
