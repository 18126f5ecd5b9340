"""MAE: vitkit equals transformers' ViTMAEForPreTraining on the same weights and the same noise.

Every checkpoint is random-initialised by transformers inside the test (small, every parameter
perturbed so that no zero bias or unit LayerNorm hides a wrong name) and saved with its own
``save_pretrained``; inputs are real photos. Tolerance: fp32 max abs diff <= 1e-4.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file

from vitkit.checkpoints.hf_mae import load_mae, load_mae_encoder, mae_state_dict, save_mae
from vitkit.errors import CheckpointError
from vitkit.models.mae import MAE, MAEConfig, build_mae
from vitkit.models.posembed import sincos_2d_pos_embed

TOLERANCE = 1e-4
IMAGE, PATCH = 32, 8
PATCHES = (IMAGE // PATCH) ** 2


def photos(size: int = IMAGE) -> torch.Tensor:
    """Four real photos (scikit-image), resized and normalised to [-1, 1]."""
    from skimage import data

    images = [data.astronaut(), data.coffee(), data.chelsea(), data.immunohistochemistry()]
    batch = torch.cat(
        [
            F.interpolate(
                torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255,
                size=(size, size),
                mode="bilinear",
                antialias=True,
            )
            for image in images
        ]
    )
    return (batch - 0.5) / 0.5


def small_config(**changes: Any) -> Any:
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=IMAGE,
        patch_size=PATCH,
        decoder_hidden_size=24,
        decoder_num_hidden_layers=2,
        decoder_num_attention_heads=3,
        decoder_intermediate_size=40,
        layer_norm_eps=1e-6,
    )
    settings.update(changes)
    return transformers.ViTMAEConfig(**settings)


def hf_mae_dir(tmp_path: Path, seed: int = 0, **changes: Any) -> tuple[Any, Path]:
    torch.manual_seed(seed)
    model = transformers.ViTMAEForPreTraining(small_config(**changes)).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():  # the frozen sin-cos tables are left alone
            if parameter.requires_grad:
                noise = torch.randn(parameter.shape, generator=generator)
                parameter.add_(noise * (0.05 if parameter.dim() > 1 else 0.2))
    directory = tmp_path / f"hf-mae-{seed}"
    model.save_pretrained(directory)
    return model, directory


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_loss_and_reconstruction_equal_transformers(tmp_path: Path, norm_pix_loss: bool) -> None:
    reference, directory = hf_mae_dir(tmp_path, norm_pix_loss=norm_pix_loss)
    ours, _ = load_mae(directory)
    assert ours.config.norm_pix_loss is norm_pix_loss
    pixels = photos()
    noise = torch.rand(len(pixels), PATCHES, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference(pixels, noise=noise)
        got = ours(pixels, noise=noise)
    assert torch.equal(got.mask, expected.mask)
    assert torch.equal(got.ids_restore, expected.ids_restore)
    assert got.mask.sum(1).tolist() == [PATCHES - PATCHES // 4] * len(pixels)  # 75% dropped
    assert max_diff(got.logits, expected.logits) <= TOLERANCE
    assert abs(got.loss.item() - expected.loss.item()) <= TOLERANCE
    # The loss is not trivially shared: another mask gives another loss on both sides.
    other = torch.rand(len(pixels), PATCHES, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert abs(ours(pixels, noise=other).loss - got.loss) > 1e-3
    # The reconstruction picture transformers users draw: unpatchify(logits).
    with torch.no_grad():
        picture = ours.unpatchify(got.logits)
    assert max_diff(picture, reference.unpatchify(expected.logits)) <= TOLERANCE
    assert torch.equal(ours.patchify(pixels), reference.patchify(pixels))


def test_saved_directory_loads_in_transformers_with_equal_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = MAEConfig(
        encoder=MAEConfig.plain_encoder(
            transformers_free_encoder(hidden_size=32, layers=2, heads=4, mlp=48)
        ),
        decoder_hidden_size=16,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=64,
        mask_ratio=0.5,
        norm_pix_loss=True,
    )
    ours = build_mae(config).eval()
    saved = save_mae(ours, tmp_path / "ours")
    # The hub's layout (what facebook/vit-mae-* ship), not transformers 5's decoder_encoder spelling.
    names = set(load_file(saved / "model.safetensors"))
    assert "decoder.decoder_layers.0.attention.attention.query.weight" in names
    assert "vit.encoder.layer.1.attention.attention.value.bias" in names
    reference = transformers.ViTMAEForPreTraining.from_pretrained(saved).eval()
    assert reference.config.mask_ratio == 0.5 and reference.config.norm_pix_loss
    pixels = photos()
    noise = torch.rand(len(pixels), PATCHES, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected, got = reference(pixels, noise=noise), ours(pixels, noise=noise)
    assert max_diff(got.logits, expected.logits) <= TOLERANCE
    assert abs(got.loss.item() - expected.loss.item()) <= TOLERANCE


def transformers_free_encoder(hidden_size: int, layers: int, heads: int, mlp: int) -> Any:
    from vitkit.models.config import ViTConfig

    return ViTConfig(
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=mlp,
        image_size=IMAGE,
        patch_size=PATCH,
    )


def test_encoder_for_fine_tuning_equals_unmasked_vitmae_model(tmp_path: Path) -> None:
    """The encoder alone (decoder dropped) sees every patch: transformers' ViTMAEModel with
    mask_ratio 0 and increasing noise (which keeps patch order) gives the same tokens."""
    _, directory = hf_mae_dir(tmp_path, seed=1)
    encoder, _ = load_mae_encoder(directory)
    assert encoder.config.num_labels == 0 and encoder.pooler is None
    config = transformers.ViTMAEConfig.from_pretrained(directory)
    config.mask_ratio = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = transformers.ViTMAEModel.from_pretrained(directory, config=config).eval()
    pixels = photos()
    in_order = torch.arange(PATCHES, dtype=torch.float32).expand(len(pixels), -1)
    with torch.no_grad():
        expected = reference(pixels, noise=in_order).last_hidden_state
        got = encoder(pixels).last_hidden_state
    assert max_diff(got, expected) <= TOLERANCE


def test_transformers5_spellings_read_back(tmp_path: Path) -> None:
    """transformers 5 writes decoder layers as decoder.decoder_encoder.layer.i; its modules are
    named vit.layers.i.attention.q_proj: both read as the hub layout does."""
    reference, directory = hf_mae_dir(tmp_path, seed=2)
    assert any("decoder_encoder" in name for name in load_file(directory / "model.safetensors"))
    module_names = tmp_path / "module-names"
    module_names.mkdir()
    (module_names / "config.json").write_text((directory / "config.json").read_text())
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(state, str(module_names / "model.safetensors"))
    pixels = photos()
    noise = torch.rand(len(pixels), PATCHES, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = reference(pixels, noise=noise).logits
        for source in (directory, module_names):
            assert max_diff(load_mae(source)[0](pixels, noise=noise).logits, expected) <= TOLERANCE


def test_sincos_table_is_maes() -> None:
    """transformers' table, with the column/row halves swapped back as its ViTMAE does to match
    the published weights (facebookresearch/mae names the column coordinate h)."""
    from transformers.models.vit_mae.modeling_vit_mae import (
        build_2d_sinusoidal_position_embedding,
    )

    table = build_2d_sinusoidal_position_embedding(6, 6, embed_dim=48, cls_token=True)
    table = torch.cat([table[:, 24:], table[:, :24]], dim=1)
    assert max_diff(sincos_2d_pos_embed(6, 48)[0], table) < 1e-6
    assert not sincos_2d_pos_embed(6, 48)[0, 0].any()  # [CLS] gets no position


def test_decoder_problems_listed_and_encoder_only_refused(tmp_path: Path) -> None:
    _, directory = hf_mae_dir(tmp_path)
    tensors = load_file(directory / "model.safetensors")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((directory / "config.json").read_text())
    tensors.pop("decoder.decoder_pred.bias")
    tensors["decoder.decoder_norm.weight"] = torch.ones(7)
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError) as error:
        load_mae(broken)
    message = str(error.value)
    assert "decoder.decoder_pred.bias" in message and "decoder.decoder_norm.weight" in message
    encoder_only = {k: v for k, v in tensors.items() if not k.startswith("decoder.")}
    save_file(encoder_only, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError, match="without its decoder"):
        load_mae(broken)
    assert load_mae_encoder(broken)[0].config.hidden_size == 32  # fine for fine-tuning


def test_mae_state_dict_round_trip_and_frozen_positions() -> None:
    config = MAEConfig(
        encoder=transformers_free_encoder(32, 1, 2, 32),
        decoder_hidden_size=16,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
    )
    model = build_mae(config)
    assert not model.encoder.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    names = mae_state_dict(model)
    assert len(names) == len(model.state_dict()) + 2 * 2 * (1 + 1)  # qkv split in three, x2 layers
    with pytest.raises(ValueError, match="square"):
        MAEConfig(encoder=config.encoder.replace(image_size=(32, 48)))
    with pytest.raises(ValueError, match="keeps no patch"):
        MAEConfig(encoder=config.encoder, mask_ratio=0.99)
    assert isinstance(model, MAE)
