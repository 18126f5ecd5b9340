"""The model itself: sizes against timm, FLOPs against torch's counter, attention weights, resampling."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vitkit.models.config import ViTConfig, parse_preset_name, preset
from vitkit.models.posembed import resample_pos_embed
from vitkit.models.vit import ViT


def tiny_config(**overrides: object) -> ViTConfig:
    base = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=32,
        patch_size=8,
        num_labels=5,
    )
    base.update(overrides)
    return ViTConfig(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "timm_name"),
    [
        ("vit-tiny-patch16-224", "vit_tiny_patch16_224"),
        ("vit-small-patch32-224", "vit_small_patch32_224"),
        ("vit-base-patch16-384", "vit_base_patch16_384"),
        ("vit-large-patch16-224", "vit_large_patch16_224"),
        ("vit-huge-patch14-224", "vit_huge_patch14_224"),
    ],
)
def test_presets_match_timm_shapes(name: str, timm_name: str) -> None:
    import timm

    with torch.device("meta"):
        reference = timm.create_model(timm_name, pretrained=False, num_classes=1000)
        ours = ViT(preset(name, num_labels=1000))
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    timm_shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert ours_shapes == timm_shapes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("google/vit-base-patch16-224", ("base", 16, 224)),
        ("vit_large_patch14_224", ("large", 14, 224)),
        ("ViT-B/16", ("base", 16, 224)),
        ("ViT-L/32", ("large", 32, 224)),
        ("vit-base-patch16-384", ("base", 16, 384)),
    ],
)
def test_preset_names(text: str, expected: tuple[str, int, int]) -> None:
    assert parse_preset_name(text) == expected


def test_unknown_preset_names_the_fix() -> None:
    with pytest.raises(ValueError, match="vit-base-patch16-224"):
        preset("resnet50")


def test_flops_per_image_matches_torch_flop_counter() -> None:
    model = ViT(preset("vit-small-patch16-224", num_labels=1000)).eval()
    counter = FlopCounterMode(display=False)
    # The explicit attention path: torch's counter does not see inside the CPU SDPA kernel.
    with counter, torch.no_grad():
        model(torch.randn(1, 3, 224, 224), output_attentions=True)
    measured = counter.get_total_flops()
    assert model.flops_per_image() == pytest.approx(measured, rel=0.01)


def test_vit_base_is_the_published_size() -> None:
    with torch.device("meta"):
        model = ViT(preset("vit-base-patch16-224", num_labels=1000))
    # 86.6M parameters and 35.1 GFLOPs: the numbers quoted for ViT-B/16 at 224.
    assert model.num_parameters() == 86_567_656
    assert model.flops_per_image() / 1e9 == pytest.approx(35.1, abs=0.15)


def test_attention_weights_path_equals_fused_path() -> None:
    torch.manual_seed(0)
    model = ViT(tiny_config()).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fast = model(pixels)
        explicit = model(pixels, output_attentions=True)
    assert fast.attentions is None
    assert explicit.attentions is not None and len(explicit.attentions) == 2
    weights = explicit.attentions[0]
    assert weights.shape == (2, 4, 17, 17)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 17), atol=1e-5, rtol=0)
    assert fast.logits is not None and explicit.logits is not None
    torch.testing.assert_close(fast.logits, explicit.logits, atol=1e-5, rtol=0)


def test_non_square_and_call_time_resolution() -> None:
    torch.manual_seed(0)
    model = ViT(tiny_config(image_size=(32, 48))).eval()
    assert model.pos_embed.shape == (1, 1 + 4 * 6, 64)
    with torch.no_grad():
        native = model(torch.randn(1, 3, 32, 48))
        other = model(torch.randn(1, 3, 64, 40))
    assert native.last_hidden_state.shape == (1, 25, 64)
    assert other.last_hidden_state.shape == (1, 1 + 8 * 5, 64)


def test_input_not_a_multiple_of_patch_size_is_refused() -> None:
    model = ViT(tiny_config())
    with pytest.raises(ValueError, match="multiple of the patch size 8"):
        model(torch.randn(1, 3, 30, 32))


def test_resample_keeps_cls_and_identity_grid() -> None:
    pos = torch.randn(1, 1 + 14 * 14, 32)
    same = resample_pos_embed(pos, (14, 14))
    assert same is pos
    bigger = resample_pos_embed(pos, (24, 24))
    assert bigger.shape == (1, 1 + 24 * 24, 32)
    torch.testing.assert_close(bigger[:, :1], pos[:, :1])


def test_resample_matches_hf_call_time_interpolation() -> None:
    """Call-time resampling equals transformers' interpolate_pos_encoding=True on the same weights."""
    import transformers

    torch.manual_seed(0)
    hf_config = transformers.ViTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=32,
        patch_size=8,
    )
    reference = transformers.ViTModel(hf_config, add_pooling_layer=False).eval()
    pos = reference.embeddings.position_embeddings.detach()
    # HF interpolates the grid with bicubic, no antialias, [CLS] untouched.
    with torch.no_grad():
        expected = reference.embeddings.interpolate_pos_encoding(
            torch.zeros(1, 1 + 8 * 8, 64), 64, 64
        )
    ours = resample_pos_embed(pos, (8, 8), (4, 4), antialias=False)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)


def test_pooler_feeds_head_only_when_configured() -> None:
    torch.manual_seed(0)
    config = tiny_config(add_pooling_layer=True, classifier_uses_pooler=True)
    model = ViT(config).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
        assert out.pooler_output is not None and out.logits is not None
        expected = model.head(torch.tanh(model.pooler.dense(out.last_hidden_state[:, 0])))  # type: ignore[union-attr]
    torch.testing.assert_close(out.logits, expected)


def test_headless_model_has_no_logits() -> None:
    model = ViT(tiny_config(num_labels=0, add_pooling_layer=True)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert out.logits is None and out.pooler_output is not None


def test_reset_head_is_zero_initialised() -> None:
    model = ViT(tiny_config())
    model.reset_head({0: "normal", 1: "serrated", 2: "adenoma"})
    assert model.config.num_labels == 3 and model.config.labels() == [
        "normal",
        "serrated",
        "adenoma",
    ]
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32)).logits
    assert logits is not None
    assert torch.count_nonzero(logits) == 0


def test_drop_path_only_in_training() -> None:
    torch.manual_seed(0)
    model = ViT(tiny_config(drop_path_rate=0.5))
    pixels = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        first, second = model(pixels).logits, model(pixels).logits
    torch.testing.assert_close(first, second)
    model.train()
    torch.manual_seed(1)
    a = model(pixels).last_hidden_state
    torch.manual_seed(2)
    b = model(pixels).last_hidden_state
    assert not torch.allclose(a, b)


def test_config_json_round_trip_through_transformers() -> None:
    import transformers

    config = tiny_config(
        image_size=(32, 48),
        qkv_bias=False,
        layer_norm_eps=1e-6,
        num_labels=2,
        id2label={0: "a", 1: "b"},
    )
    hf = transformers.ViTConfig(
        **{k: v for k, v in config.to_hf_dict().items() if k != "architectures"}
    )
    assert hf.num_labels == 2 and hf.id2label == {0: "a", 1: "b"}
    assert hf.qkv_bias is False and hf.layer_norm_eps == 1e-6
    back = ViTConfig.from_hf_dict({**hf.to_dict(), "architectures": ["ViTForImageClassification"]})
    assert back.image_hw == (32, 48) and back.num_labels == 2 and back.labels() == ["a", "b"]


def test_drop_path_draws_as_torchvision_stochastic_depth() -> None:
    """vitkit's DropPath (kept off torchvision's import for start-up time) makes the same random
    draws and arithmetic as ``torchvision.ops.StochasticDepth(p, "row")``: training runs and their
    resumes stay what they were."""
    from torchvision.ops import StochasticDepth

    from vitkit.models.vit import DropPath

    tokens = torch.randn(16, 5, 8)
    for p in (0.0, 0.3, 1.0):
        ours, theirs = DropPath(p).train(), StochasticDepth(p, mode="row").train()
        torch.manual_seed(3)
        expected = theirs(tokens)
        torch.manual_seed(3)
        assert torch.equal(ours(tokens), expected), p
        assert torch.equal(ours.eval()(tokens), tokens)
