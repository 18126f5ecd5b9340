"""DINOv2 / pathology ViT features around the model: config names, families, what cannot be
inferred, saving, the commands (embed, info, train) and the fast paths (int8, sub-batches,
[CLS]-only logits, ONNX): each works for the new features or refuses with a reason."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
import transformers
from safetensors.torch import save_file

from vitkit.checkpoints import CheckpointError, load_model, save_pretrained
from vitkit.cli import main
from vitkit.models.config import ViTConfig
from vitkit.models.families import identify, with_family
from vitkit.models.vit import ViT

TOLERANCE = 1e-4


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if "ls" in name or "lambda1" in name:
                parameter.copy_(0.5 + 0.2 * noise)
            else:
                parameter.add_(noise * (0.05 if parameter.dim() > 1 else 0.2))
    return model.eval()


def photo_pixels(size: int, count: int = 4) -> torch.Tensor:
    from skimage import data

    images = [data.immunohistochemistry(), data.astronaut(), data.coffee(), data.chelsea()]
    tensors = [
        torch.nn.functional.interpolate(
            torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255,
            size=(size, size),
            mode="bilinear",
            antialias=True,
        )[0]
        for image in images[:count]
    ]
    return (torch.stack(tensors) - 0.5) / 0.5


def variant_vit(**changes: Any) -> ViT:
    """A small ViT with LayerScale, 4 registers and SwiGLU (DINOv2-g reg4 / Virchow2 shape)."""
    settings: dict[str, Any] = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        image_size=56,
        patch_size=14,
        layer_norm_eps=1e-6,
        layerscale_value=1e-5,
        num_register_tokens=4,
        no_embed_class=True,
        use_swiglu_ffn=True,
        hidden_act="silu",
        num_labels=3,
    )
    settings.update(changes)
    settings["id2label"] = {i: f"class {i}" for i in range(settings["num_labels"])}
    torch.manual_seed(0)
    return randomise(ViT(ViTConfig(**settings)))


# ---- config and families ------------------------------------------------------------------
def test_plain_config_is_unchanged_and_timm_names_are_accepted() -> None:
    plain = ViTConfig()
    assert plain.variant_features == []
    written = plain.to_hf_dict()
    assert not {"layerscale_value", "global_pool", "num_register_tokens"} & set(written)
    config = ViTConfig.from_hf_dict({"init_values": 1e-5, "reg_tokens": 4})
    assert (config.layerscale_value, config.num_register_tokens) == (1e-5, 4)
    assert plain.replace(init_values=0.1).layerscale_value == 0.1
    with pytest.raises(ValueError, match=r"'map'.*not supported"):
        ViTConfig(global_pool="map")
    with pytest.raises(ValueError, match=r"class_token=False.*global_pool='avg'"):
        ViTConfig(class_token=False)


@pytest.mark.parametrize(
    ("shape", "name", "pool"),
    [
        (dict(patch_size=16, hidden_size=1024, num_hidden_layers=24), "UNI", "token"),
        (dict(hidden_size=1536, num_hidden_layers=24, swiglu=True, registers=8), "UNI2-h", "token"),
        (dict(hidden_size=1280, num_hidden_layers=32, swiglu=True), "Virchow", "avg+token"),
        (dict(hidden_size=1280, num_hidden_layers=32, swiglu=True, registers=4), "Virchow2", "avg+token"),
        (dict(patch_size=16, hidden_size=1536, num_hidden_layers=40, swiglu=True), "Prov-GigaPath", "token"),
    ],
)  # fmt: skip
def test_families_are_named_and_set_their_embedding(
    shape: dict[str, Any], name: str, pool: str
) -> None:
    settings = {"patch_size": 14, "num_attention_heads": 16, **shape}
    swiglu, registers = settings.pop("swiglu", False), settings.pop("registers", 0)
    config = ViTConfig(
        **settings,
        layerscale_value=1e-5,
        use_swiglu_ffn=swiglu,
        hidden_act="silu" if swiglu else "gelu",
        num_register_tokens=registers,
    )
    family = identify(config)
    assert family is not None and family.name == name
    headless = with_family(config)
    assert (headless.family, headless.global_pool) == (name, pool)
    with_head = with_family(config.replace(num_labels=2))  # a trained head keeps its pooling
    assert with_head.global_pool == "token"
    assert identify(config.replace(num_hidden_layers=12)) is None


# ---- what the shapes cannot tell ------------------------------------------------------------
def test_unknowable_settings_name_the_model_arg(tmp_path: Path) -> None:
    torch.manual_seed(0)
    odd_width = timm.create_model(
        "vit_small_patch16_224", pretrained=False, embed_dim=200, num_heads=5, depth=1, img_size=32
    )
    path = tmp_path / "width200.safetensors"
    save_file({k: v.contiguous() for k, v in odd_width.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match="--model-arg num_attention_heads=N"):
        load_model(path)
    assert (
        load_model(path, overrides={"num_attention_heads": 5}).model.config.num_attention_heads == 5
    )
    with pytest.raises(CheckpointError, match=r"unknown model setting.*num_heeds"):
        load_model(path, overrides={"num_heeds": 5})


def test_ambiguous_prefix_positions_need_no_embed_class(tmp_path: Path) -> None:
    # 4x4 patches + [CLS] + 8 registers = 25 positions: a 5x5 grid without prefix positions,
    # or a 4x4 grid with them. The file cannot say which; --model-arg can.
    reference = randomise(
        timm.create_model(
            "vit_small_patch14_dinov2", pretrained=False, img_size=56, depth=1, embed_dim=64,
            num_heads=4, reg_tokens=8, no_embed_class=False, num_classes=0,
        )
    )  # fmt: skip
    path = tmp_path / "reg8.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match="--model-arg no_embed_class=true"):
        load_model(path)
    model = load_model(path, overrides={"no_embed_class": False, "num_attention_heads": 4}).model
    pixels = photo_pixels(56, count=2)
    with torch.no_grad():
        expected = reference.forward_features(pixels)
        assert float((model(pixels).last_hidden_state - expected).abs().max()) <= TOLERANCE


# ---- saving -----------------------------------------------------------------------------------
def test_dinov2_saves_as_dinov2_and_others_as_timm(tmp_path: Path) -> None:
    transformers.utils.logging.set_verbosity_error()
    config = transformers.Dinov2WithRegistersConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=56, patch_size=14,
        num_register_tokens=4, num_labels=3,
    )  # fmt: skip
    torch.manual_seed(0)
    reference = randomise(transformers.Dinov2WithRegistersForImageClassification(config))
    reference.save_pretrained(tmp_path / "hf")
    model = load_model(tmp_path / "hf").model
    assert model.config.global_pool == "avg+token"  # transformers' head: [CLS] + mean patch
    save_pretrained(model, tmp_path / "again")
    reloaded = transformers.Dinov2WithRegistersForImageClassification.from_pretrained(
        tmp_path / "again"
    ).eval()
    pixels = photo_pixels(56)
    with torch.no_grad():
        expected = reference(pixel_values=pixels).logits
        assert float((model(pixels).logits - expected).abs().max()) <= TOLERANCE
        assert float((reloaded(pixel_values=pixels).logits - expected).abs().max()) <= TOLERANCE
    # A model transformers cannot express: timm's Hub layout, reloaded exactly.
    other = variant_vit(global_pool="avg", fc_norm=True)
    save_pretrained(other, tmp_path / "timm-layout")
    assert "architecture" in json.loads((tmp_path / "timm-layout" / "config.json").read_text())
    back = load_model(tmp_path / "timm-layout").model
    assert back.config == other.config
    with torch.no_grad():
        assert torch.equal(back(pixels).logits, other(pixels).logits)


# ---- fast paths -------------------------------------------------------------------------------
def test_cls_only_logits_only_where_exact() -> None:
    from vitkit.models.config import ViTConfig as Config
    from vitkit.models.deit import DistilledViT

    pixels = photo_pixels(56)
    token = variant_vit()
    assert token.cls_only_logits_exact
    averaged = variant_vit(global_pool="avg+token")
    assert not averaged.cls_only_logits_exact  # the mean reads every token's last-block output
    deit = randomise(
        DistilledViT(
            Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64, image_size=56, patch_size=14, num_labels=3)
        )
    )  # fmt: skip
    assert not deit.cls_only_logits_exact  # its second head reads the distillation token
    with torch.no_grad():
        for model in (token, averaged, deit):
            full = model(pixels).logits
            assert float((model.forward_logits(pixels) - full).abs().max()) <= 1e-5
        # embeddings of [CLS] take the same shortcut; those reading every token do not need to
        for pool in ("cls", "cls+mean", "mean"):
            tokens = token(pixels).last_hidden_state
            fast = token.forward_embedding(pixels, pool)
            assert float((fast - token.pool(tokens, pool)).abs().max()) <= 1e-5


def test_int8_and_sub_batches_run_the_variants() -> None:
    from vitkit.inference import runtime

    model = variant_vit()
    pixels = photo_pixels(56)
    with torch.no_grad():
        expected = model(pixels).logits
    split = runtime.optimize(model, threads=2)  # 4 images on 2 threads: two sub-batches
    assert float((split(pixels) - expected).abs().max()) <= 1e-5
    int8 = runtime.optimize(model, precision="int8", threads=1)
    logits = int8(pixels)
    # int8 is approximate: close, never a silent garbage path (SwiGLU and LayerScale included)
    assert float((logits - expected).abs().max()) <= 0.05 * float(expected.abs().max())


def test_onnx_export_of_registers_swiglu_and_refused_pools(tmp_path: Path) -> None:
    from vitkit.checkpoints.onnx import OnnxModel, export_onnx
    from vitkit.errors import UnsupportedOperationError

    model = variant_vit(num_hidden_layers=1, num_labels=0)
    path = export_onnx(model, tmp_path / "variant.onnx")
    exported = OnnxModel(path)
    pixels = photo_pixels(56, count=2)
    with torch.no_grad():
        tokens = model(pixels).last_hidden_state
    theirs = exported.forward_features(pixels)[0]
    assert float((theirs - tokens).abs().max()) <= TOLERANCE
    pooled = exported.forward_embedding(pixels, "cls+mean")
    assert float((pooled - model.pool(tokens, "cls+mean")).abs().max()) <= TOLERANCE
    fc_norm = variant_vit(num_hidden_layers=1, num_labels=0, global_pool="avg", fc_norm=True)
    # fc_norm is inside the graph, after pooling: its embedding cannot come from the tokens
    with pytest.raises(UnsupportedOperationError, match="no 'mean' embedding"):
        OnnxModel(export_onnx(fc_norm, tmp_path / "fc_norm.onnx")).forward_embedding(pixels)


# ---- commands ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Dinov2WithRegistersModel and its image processor, saved by transformers."""
    transformers.utils.logging.set_verbosity_error()
    directory = tmp_path_factory.mktemp("dinov2-reg")
    config = transformers.Dinov2WithRegistersConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=56, patch_size=14,
        num_register_tokens=4,
    )  # fmt: skip
    torch.manual_seed(1)
    randomise(transformers.Dinov2WithRegistersModel(config)).save_pretrained(directory)
    transformers.BitImageProcessor(
        size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56}
    ).save_pretrained(directory)
    return directory


def test_embed_command_gives_transformers_pooler_output(
    tiny_dinov2: Path, photo_dir: Path, tmp_path: Path
) -> None:
    from PIL import Image

    out = tmp_path / "embeddings.npz"
    assert main(["embed", str(photo_dir), "--model", str(tiny_dinov2), "--out", str(out)]) == 0
    saved = np.load(out)
    names = [Path(name) for name in saved["inputs"]]
    processor = transformers.AutoImageProcessor.from_pretrained(tiny_dinov2)
    reference = transformers.Dinov2WithRegistersModel.from_pretrained(tiny_dinov2).eval()
    images = [Image.open(name).convert("RGB") for name in names]
    with torch.no_grad():
        inputs = processor(images=images, return_tensors="pt")
        expected = reference(**inputs).pooler_output.numpy()
    assert saved["embeddings"].shape == (len(names), 64)
    assert float(np.abs(saved["embeddings"] - expected).max()) <= TOLERANCE


def test_info_names_family_and_embedding(tiny_dinov2: Path, capsys: Any) -> None:
    assert main(["info", str(tiny_dinov2), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["family"] == "DINOv2 with registers"
    assert facts["embedding"] == {"pool": "cls", "size": 64}
    assert facts["tokens"] == 16 + 1 + 4


def test_embed_refuses_a_pool_the_model_lacks(tmp_path: Path, photo_dir: Path, capsys: Any) -> None:
    model = variant_vit(num_labels=0, class_token=False, global_pool="avg", fc_norm=True)
    save_pretrained(model, tmp_path / "no-cls")
    args = [
        "embed",
        str(photo_dir),
        "--model",
        str(tmp_path / "no-cls"),
        "--out",
        str(tmp_path / "e.npy"),
    ]
    assert main([*args, "--pool", "cls"]) == 1
    assert "no 'cls' embedding" in capsys.readouterr().err
    assert main(args) == 0  # the default: the mean patch token through fc_norm
    assert np.load(tmp_path / "e.npy").shape[1] == 64


def test_train_from_dinov2_at_another_resolution(tiny_dinov2: Path, tmp_path: Path) -> None:
    from PIL import Image

    from conftest import real_photos

    data = tmp_path / "data"
    for name, pixels in list(real_photos().items())[:4]:
        for index, crop in enumerate(
            (pixels[:100, :100], pixels[-100:, -100:], pixels[:100, -100:])
        ):
            label = "histology" if name == "histology" else "photo"
            folder = data / label
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(crop)).save(folder / f"{name}{index}.png")
    out = tmp_path / "run"
    args = [
        "train", "--data", str(data), "--out", str(out), "--model", str(tiny_dinov2),
        "--image-size", "42", "--epochs", "1", "--batch-size", "4", "--lr", "1e-3",
        "--optimizer", "adamw", "--augment", "none", "--no-progress", "--device", "cpu",
        "--val-fraction", "0.25", "--workers", "0",
    ]  # fmt: skip
    assert main(args) == 0
    trained = load_model(out / "best").model
    assert trained.config.image_hw == (42, 42) and trained.config.num_labels == 2
    assert trained.config.num_register_tokens == 4 and trained.config.family
    with torch.no_grad():
        assert trained(photo_pixels(42)).logits.shape == (4, 2)


def test_serve_embed_gives_the_family_default(tiny_dinov2: Path, photo_dir: Path) -> None:
    from fastapi.testclient import TestClient
    from PIL import Image

    from vitkit import load
    from vitkit.serve import ServeSettings, create_app

    classifier = load(tiny_dinov2, device="cpu")
    app = create_app(classifier, ServeSettings(max_batch_size=2))
    data = (photo_dir / "histology.jpg").read_bytes()
    processor = transformers.AutoImageProcessor.from_pretrained(tiny_dinov2)
    reference = transformers.Dinov2WithRegistersModel.from_pretrained(tiny_dinov2).eval()
    with torch.no_grad():
        inputs = processor(
            images=[Image.open(photo_dir / "histology.jpg").convert("RGB")], return_tensors="pt"
        )
        expected = reference(**inputs).pooler_output.numpy()
    with TestClient(app, raise_server_exceptions=False) as client:
        for _ in range(600):  # the model warms up in the background
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.05)
        body = client.post("/v1/embed", files={"f": ("h.jpg", data, "image/jpeg")}).json()
        assert body["pool"] == "cls" and body["dim"] == 64
        assert float(np.abs(np.array(body["embeddings"]) - expected).max()) <= TOLERANCE
        both = client.post("/v1/embed?pool=cls%2Bmean", files={"f": ("h.jpg", data, "image/jpeg")})
        assert both.json()["dim"] == 128  # [CLS] + mean patch token (registers left out)
