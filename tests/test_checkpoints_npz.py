"""Google's vit_jax .npz files: vitkit equals timm after timm loads the same file.

The test writes a vit_jax-named .npz from a random timm model with vit_jax's shapes (Flax kernels
are (in, out); attention kernels (D, heads, head_dim) and (heads, head_dim, D); the patch kernel
HWIO), then lets timm's own .npz loader (``VisionTransformer.load_pretrained``) read it back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from vitkit.checkpoints import CheckpointError, detect_format, load_model

TOLERANCE = 1e-4


def photos(size: int, count: int = 2) -> torch.Tensor:
    from sklearn.datasets import load_sample_images

    images = load_sample_images().images[:count]  # two real photos: a temple in China, a flower
    resized = [
        F.interpolate(
            torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255,
            size=(size, size),
            mode="bilinear",
            antialias=True,
        )
        for image in images
    ]
    return (torch.cat(resized) - 0.5) / 0.5


def random_timm(seed: int = 0, **kwargs: Any) -> Any:
    torch.manual_seed(seed)
    settings: dict[str, Any] = dict(depth=2, num_classes=10)
    settings.update(kwargs)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **settings).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.add_(noise * (0.05 if parameter.dim() > 1 else 0.2))
    return model


def vit_jax_arrays(model: Any) -> dict[str, np.ndarray]:
    """The model's weights under vit_jax names and shapes (independent of vitkit's reader)."""
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    dim = state["cls_token"].shape[-1]
    heads = model.blocks[0].attn.num_heads
    head_dim = dim // heads
    out = {
        "embedding/kernel": state["patch_embed.proj.weight"].transpose(2, 3, 1, 0),  # OIHW->HWIO
        "embedding/bias": state["patch_embed.proj.bias"],
        "cls": state["cls_token"],
        "Transformer/posembed_input/pos_embedding": state["pos_embed"],
        "Transformer/encoder_norm/scale": state["norm.weight"],
        "Transformer/encoder_norm/bias": state["norm.bias"],
    }
    for i in range(len(model.blocks)):
        ours, theirs = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        attention = theirs + "MultiHeadDotProductAttention_1/"
        q, k, v = np.split(state[ours + "attn.qkv.weight"], 3)
        qb, kb, vb = np.split(state[ours + "attn.qkv.bias"], 3)
        for name, weight, bias in (("query", q, qb), ("key", k, kb), ("value", v, vb)):
            out[f"{attention}{name}/kernel"] = weight.T.reshape(dim, heads, head_dim)
            out[f"{attention}{name}/bias"] = bias.reshape(heads, head_dim)
        out[f"{attention}out/kernel"] = state[ours + "attn.proj.weight"].T.reshape(
            heads, head_dim, dim
        )
        out[f"{attention}out/bias"] = state[ours + "attn.proj.bias"]
        for norm, flax_norm in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
            out[f"{theirs}{flax_norm}/scale"] = state[f"{ours}{norm}.weight"]
            out[f"{theirs}{flax_norm}/bias"] = state[f"{ours}{norm}.bias"]
        for fc, dense in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
            out[f"{theirs}MlpBlock_3/{dense}/kernel"] = state[f"{ours}mlp.{fc}.weight"].T
            out[f"{theirs}MlpBlock_3/{dense}/bias"] = state[f"{ours}mlp.{fc}.bias"]
    if "head.weight" in state:
        out["head/kernel"] = state["head.weight"].T
        out["head/bias"] = state["head.bias"]
    return out


def timm_from_npz(path: Path, **kwargs: Any) -> Any:
    """A fresh timm model of the same architecture that loaded ``path`` with timm's own loader."""
    settings: dict[str, Any] = dict(depth=2, num_classes=10)
    settings.update(kwargs)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **settings).eval()
    model.load_pretrained(str(path))
    return model


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("prefix", ["", "opt/target/"])
def test_npz_equals_timm_loading_the_same_file(prefix: str, tmp_path: Path) -> None:
    arrays = vit_jax_arrays(random_timm())
    extra = {"opt/state/step": np.array(1000)} if prefix else {}  # optimiser state: ignored
    path = tmp_path / "ViT-Ti_16.npz"
    np.savez(path, **{prefix + k: v for k, v in arrays.items()}, **extra)
    reference = timm_from_npz(path)
    assert detect_format(path) == "npz"
    loaded = load_model(path)
    config = loaded.model.config
    assert loaded.format == "npz"
    assert (config.num_attention_heads, config.num_hidden_layers, config.num_labels) == (3, 2, 10)
    pixels = photos(224)
    with torch.no_grad():
        expected_tokens = reference.forward_features(pixels)
        expected = reference.forward_head(expected_tokens)
        ours = loaded.model(pixels)
    assert max_diff(ours.last_hidden_state, expected_tokens) <= TOLERANCE
    assert max_diff(ours.logits, expected) <= TOLERANCE


def test_pre_logits_against_timm_module_maths(tmp_path: Path) -> None:
    """timm's .npz loader skips pre_logits (it removed the representation layer), so the
    reference is timm's loaded encoder + the pre_logits dense + tanh + head, applied by hand."""
    arrays = vit_jax_arrays(random_timm(seed=1))
    rng = np.random.default_rng(1)
    arrays["pre_logits/kernel"] = rng.normal(0, 0.05, (192, 192)).astype(np.float32)
    arrays["pre_logits/bias"] = rng.normal(0, 0.2, (192,)).astype(np.float32)
    path = tmp_path / "ViT-Ti_16-in21k.npz"
    np.savez(path, **{"opt/target/" + k: v for k, v in arrays.items()})
    reference = timm_from_npz(path)
    loaded = load_model(path)
    assert loaded.model.config.add_pooling_layer and loaded.model.config.classifier_uses_pooler
    pixels = photos(224)
    kernel = torch.from_numpy(arrays["pre_logits/kernel"])
    bias = torch.from_numpy(arrays["pre_logits/bias"])
    with torch.no_grad():
        cls = reference.forward_features(pixels)[:, 0]
        pre_logits = torch.tanh(cls @ kernel + bias)  # Flax Dense: x @ kernel + bias
        expected = reference.head(pre_logits)
        ours = loaded.model(pixels)
    assert ours.pooler_output is not None
    assert max_diff(ours.pooler_output, pre_logits) <= TOLERANCE
    assert max_diff(ours.logits, expected) <= TOLERANCE


def test_headless_npz_is_a_feature_extractor(tmp_path: Path) -> None:
    arrays = vit_jax_arrays(random_timm(seed=2))
    del arrays["head/kernel"], arrays["head/bias"]
    path = tmp_path / "features.npz"
    np.savez(path, **arrays)
    reference = timm_from_npz(path, num_classes=0)
    loaded = load_model(path)
    assert loaded.model.config.num_labels == 0
    pixels = photos(224, count=1)
    with torch.no_grad():
        expected = reference.forward_features(pixels)
        assert max_diff(loaded.model(pixels).last_hidden_state, expected) <= TOLERANCE


def test_npz_mismatches_and_non_npz_files(tmp_path: Path) -> None:
    arrays = vit_jax_arrays(random_timm(seed=3))
    del arrays["Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias"]
    arrays["Transformer/encoderblock_1/Surprise/kernel"] = np.zeros(3, np.float32)
    path = tmp_path / "damaged.npz"
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    message = str(error.value)
    assert "damaged.npz" in message
    assert "Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias" in message
    assert "Transformer/encoderblock_1/Surprise/kernel" in message

    other = tmp_path / "other.npz"
    np.savez(other, weights=np.zeros(3))
    with pytest.raises(CheckpointError, match=r"other\.npz: not a vit_jax ViT checkpoint"):
        load_model(other)
    single = tmp_path / "single.npz"
    with single.open("wb") as handle:
        np.save(handle, np.zeros(3))  # a bare .npy array under an .npz name
    with pytest.raises(CheckpointError, match=r"single\.npz: holds a single array"):
        load_model(single)
    fake = tmp_path / "fake.npz"
    fake.write_text("not an archive")
    with pytest.raises(CheckpointError, match=r"fake\.npz: not a readable \.npz"):
        load_model(fake)
