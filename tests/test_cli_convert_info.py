"""`vitkit convert` and `vitkit info`, driven through vitkit.cli.main like a user would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file

from vitkit.checkpoints import load_model
from vitkit.cli import main

TOLERANCE = 1e-4


def photos(size: int) -> torch.Tensor:
    from skimage import data

    images = [data.chelsea(), data.astronaut()]
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


def random_timm(**kwargs: Any) -> Any:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, **kwargs).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model


@pytest.fixture(scope="module")
def timm_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    model = random_timm(num_classes=6)
    path = tmp_path_factory.mktemp("timm") / "vit_tiny_patch16_224.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def test_convert_timm_file_loads_in_transformers(
    timm_file: tuple[Any, Path], tmp_path: Path
) -> None:
    reference, path = timm_file
    assert main(["convert", str(path), str(tmp_path / "hf")]) == 0
    converted = transformers.ViTForImageClassification.from_pretrained(tmp_path / "hf").eval()
    pixels = photos(224)
    with torch.no_grad():
        assert (converted(pixels).logits - reference(pixels)).abs().max() <= TOLERANCE
    assert converted.config.layer_norm_eps == 1e-6
    processor = transformers.ViTImageProcessor.from_pretrained(tmp_path / "hf")
    assert processor.size == {"height": 224, "width": 224}


def test_convert_npz_at_another_size(tmp_path: Path) -> None:
    model = random_timm(num_classes=0)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    # A minimal vit_jax file (its layout is tested in depth in test_checkpoints_npz.py).
    arrays = {
        "embedding/kernel": state["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": state["patch_embed.proj.bias"],
        "cls": state["cls_token"],
        "Transformer/posembed_input/pos_embedding": state["pos_embed"],
        "Transformer/encoder_norm/scale": state["norm.weight"],
        "Transformer/encoder_norm/bias": state["norm.bias"],
    }
    for i in range(2):
        ours, theirs = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        mha = theirs + "MultiHeadDotProductAttention_1/"
        for name, w, b in zip(
            ("query", "key", "value"),
            np.split(state[ours + "attn.qkv.weight"], 3),
            np.split(state[ours + "attn.qkv.bias"], 3),
            strict=True,
        ):
            arrays[f"{mha}{name}/kernel"] = w.T.reshape(192, 3, 64)
            arrays[f"{mha}{name}/bias"] = b.reshape(3, 64)
        arrays[f"{mha}out/kernel"] = state[ours + "attn.proj.weight"].T.reshape(3, 64, 192)
        arrays[f"{mha}out/bias"] = state[ours + "attn.proj.bias"]
        for norm, flax in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
            arrays[f"{theirs}{flax}/scale"] = state[f"{ours}{norm}.weight"]
            arrays[f"{theirs}{flax}/bias"] = state[f"{ours}{norm}.bias"]
        for fc, dense in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
            arrays[f"{theirs}MlpBlock_3/{dense}/kernel"] = state[f"{ours}mlp.{fc}.weight"].T
            arrays[f"{theirs}MlpBlock_3/{dense}/bias"] = state[f"{ours}mlp.{fc}.bias"]
    npz = tmp_path / "ViT-Ti_16.npz"
    np.savez(npz, **arrays)
    with pytest.warns(UserWarning, match="add_pooling_layer=False"):
        assert main(["convert", str(npz), str(tmp_path / "hf"), "--image-size", "256"]) == 0
    converted = transformers.ViTModel.from_pretrained(tmp_path / "hf", add_pooling_layer=False)
    pixels = photos(256)
    with torch.no_grad():
        expected = load_model(npz, image_size=256).model(pixels).last_hidden_state
        actual = converted.eval()(pixels).last_hidden_state
    assert (actual - expected).abs().max() <= TOLERANCE
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["image_size"] == 256


def test_info_prints_config_parameters_and_gflops(
    timm_file: tuple[Any, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reference, path = timm_file
    assert main(["convert", str(path), str(tmp_path / "hf")]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "hf"), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    hf_model = transformers.ViTForImageClassification.from_pretrained(tmp_path / "hf")
    assert facts["format"] == "hf"
    assert facts["parameters"] == sum(p.numel() for p in hf_model.parameters())
    assert facts["parameters"] == sum(p.numel() for p in reference.parameters())
    assert facts["config"]["hidden_size"] == 192 and facts["config"]["num_attention_heads"] == 3
    model = load_model(tmp_path / "hf").model
    assert facts["gflops_per_image"] == pytest.approx(model.flops_per_image() / 1e9)

    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "format       timm" in text
    assert f"{facts['parameters']:,}" in text
    assert "GFLOPs/image" in text and "hidden_size              192" in text
    assert "6 classes" in text


def test_info_timings_measure_load_prepare_and_first_forward(
    tiny_hf_classifier: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["info", str(tiny_hf_classifier), "--timings", "--precision", "int8", "--json"]
    assert main([*argv, "--batch-size", "2"]) == 0
    timings = json.loads(capsys.readouterr().out)["timings"]
    assert timings["precision"] == "int8" and timings["batch_size"] == 2
    for key in ("import_torch_s", "load_s", "prepare_s", "first_forward_s", "steady_forward_s"):
        assert 0 < timings[key] < 60, key
    assert main(["info", str(tiny_hf_classifier), "--timings"]) == 0
    text = capsys.readouterr().out
    assert "timings (fp32, 1 image" in text and "first forward" in text


def test_errors_exit_non_zero_and_name_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bogus = tmp_path / "weights.pth"
    bogus.write_text("<html>404 Not Found</html>")
    assert main(["convert", str(bogus), str(tmp_path / "out")]) == 1
    assert "weights.pth: not a PyTorch checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert main(["info", "google/vit-huge-patch14-224-in21k"]) == 1
    error = capsys.readouterr().err
    assert "vitkit info: error: google/vit-huge-patch14-224-in21k" in error
    assert "--local-dir" in error


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    examples = {
        "convert": "vitkit convert ViT-B_16.npz vit-b16-hf",
        "info": "vitkit info google/vit-base-patch16-224",
    }
    for command, example in examples.items():
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert example in capsys.readouterr().out
