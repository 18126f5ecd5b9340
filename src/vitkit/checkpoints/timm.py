"""timm ``VisionTransformer`` state dicts (.safetensors / .pth / .bin), config inferred from shapes.

vitkit's parameter names are timm's, so loading is mostly reading the architecture off the tensor
shapes (what timm's ``checkpoint_filter_fn`` leaves to the model definition):

- patch size, channels and width from ``patch_embed.proj.weight`` (width, channels, p, p);
- depth from the ``blocks.N`` indices, MLP width from ``blocks.0.mlp.fc1.weight``;
- the training resolution from ``pos_embed`` (1 + rows*cols positions; a square grid is assumed
  unless ``checkpoint_image_size`` says otherwise);
- classes from ``head.weight`` (no head, or an empty one, means a feature extractor);
- ``pre_logits.fc`` (the representation layer of timm's older in21k weights) becomes the pooler,
  and the head then reads it (``classifier_uses_pooler``).

The number of attention heads leaves no trace in any shape. It comes from ``num_attention_heads``
if given, else timm's own model definitions (``HEADS_BY_WIDTH``: ViT-Ti 3, S 6, B 12, L 16,
H 16, ...), else a head width of 64 (the paper's choice for every size but Huge).
LayerNorm eps is timm's 1e-6.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from vitkit.checkpoints._common import KeyReader, StateDict, build_model, read_json, read_state_dict
from vitkit.errors import CheckpointError
from vitkit.models.config import ImageSize, ViTConfig, to_pair
from vitkit.models.vit import ViT

TIMM_LAYER_NORM_EPS = 1e-6

# embed_dim -> num_heads in timm's vision_transformer.py model definitions
# (tiny, wee, little, small, medium, betwixt, base, large, so400m, huge, giant, gigantic).
HEADS_BY_WIDTH = {
    192: 3,
    256: 4,
    320: 5,
    384: 6,
    512: 8,
    640: 10,
    768: 12,
    1024: 16,
    1152: 16,
    1280: 16,
    1408: 16,
    1664: 16,
}
_BLOCK_INDEX = re.compile(r"^blocks\.(\d+)\.")
_PRE_LOGITS = {
    "pre_logits.fc.weight": "pooler.dense.weight",
    "pre_logits.fc.bias": "pooler.dense.bias",
}


def looks_like_timm(tensors: StateDict) -> bool:
    return "patch_embed.proj.weight" in tensors and "pos_embed" in tensors


def load_timm_file(
    path: Path,
    image_size: ImageSize | None = None,
    device: str | torch.device = "cpu",
    num_attention_heads: int | None = None,
    checkpoint_image_size: ImageSize | None = None,
) -> ViT:
    """A ViT from one timm state dict file (.safetensors / .pth / .bin)."""
    tensors = read_state_dict(path)
    if checkpoint_image_size is None and image_size is not None:
        checkpoint_image_size = _requested_if_it_fits(tensors, image_size)
    config = _config_or_error(tensors, path, num_attention_heads, checkpoint_image_size)
    return _build(config, tensors, path, image_size, device)


def _requested_if_it_fits(tensors: StateDict, image_size: ImageSize) -> ImageSize | None:
    """A non-square checkpoint loaded at its own size: the requested size names its grid."""
    if not looks_like_timm(tensors):
        return None
    positions = tensors["pos_embed"].shape[1] - 1
    patch = tensors["patch_embed.proj.weight"].shape[-1]
    height, width = to_pair(image_size)
    square = math.isqrt(positions) ** 2 == positions
    fits = (height // patch) * (width // patch) == positions
    return image_size if fits and not square else None


def _config_or_error(
    tensors: StateDict,
    path: Path,
    num_attention_heads: int | None,
    checkpoint_image_size: ImageSize | None,
) -> ViTConfig:
    if not looks_like_timm(tensors):
        raise CheckpointError(_not_timm_message(path, tensors))
    return infer_config(tensors, path, num_attention_heads, checkpoint_image_size)


def _build(
    config: ViTConfig,
    tensors: StateDict,
    path: Path,
    image_size: ImageSize | None,
    device: str | torch.device,
) -> ViT:
    reader = KeyReader(tensors)
    for name in list(tensors):
        reader.move(name, _PRE_LOGITS.get(name, name))
    return build_model(config, reader, path, image_size, device)


# ---- directories timm pushes to the Hub (config.json with "architecture" + weights) ---------
def is_timm_directory(directory: Path) -> bool:
    config = directory / "config.json"
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and "architecture" in data and "model_type" not in data


def load_timm_directory(
    directory: Path,
    image_size: ImageSize | None = None,
    device: str | torch.device = "cpu",
    num_attention_heads: int | None = None,
) -> tuple[ViT, dict[str, Any]]:
    """(model, preprocessor config) from timm's Hub layout, e.g. timm/vit_base_patch16_224.augreg2_in21k_ft_in1k."""
    data = read_json(directory / "config.json")
    weights = next(
        (
            directory / n
            for n in ("model.safetensors", "pytorch_model.bin")
            if (directory / n).is_file()
        ),
        None,
    )
    if weights is None:
        raise CheckpointError(
            f"{directory}: timm config.json but no model.safetensors or pytorch_model.bin"
        )
    if not str(data.get("architecture", "")).startswith(("vit_", "deit_")):
        raise CheckpointError(
            f"{directory / 'config.json'}: timm architecture {data.get('architecture')!r} is not a "
            "plain VisionTransformer (vit_*)"
        )
    tensors = read_state_dict(weights)
    model_args = data.get("model_args") or {}
    pretrained_cfg = data.get("pretrained_cfg") or {}
    heads = num_attention_heads or model_args.get("num_heads")
    config = _config_or_error(tensors, weights, heads, _input_size(pretrained_cfg, tensors))
    names = data.get("label_names")
    if isinstance(names, list) and len(names) == config.num_labels:
        config = config.replace(id2label=dict(enumerate(map(str, names))))
    model = _build(config, tensors, weights, image_size, device)
    return model, processor_config_from_timm(pretrained_cfg, config.image_hw)


def _input_size(pretrained_cfg: dict[str, Any], tensors: StateDict) -> tuple[int, int] | None:
    size = pretrained_cfg.get("input_size")
    if not (isinstance(size, list | tuple) and len(size) == 3):
        return None
    height, width = int(size[1]), int(size[2])
    patch = (
        tensors["patch_embed.proj.weight"].shape[-1] if "patch_embed.proj.weight" in tensors else 0
    )
    if not patch or (height // patch) * (width // patch) != tensors["pos_embed"].shape[1] - 1:
        return None  # metadata disagrees with the weights: let the shapes decide
    return (height, width)


_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1}


def processor_config_from_timm(
    pretrained_cfg: dict[str, Any], image_hw: tuple[int, int]
) -> dict[str, Any]:
    """timm's eval transform as a preprocessor_config.json dict: resize the shorter side to
    size / crop_pct (timm's ``floor``), centre-crop to size, rescale, normalise."""
    height, width = image_hw
    crop_pct = float(pretrained_cfg.get("crop_pct") or 1.0)
    config: dict[str, Any] = {
        "do_resize": True,
        "resample": _RESAMPLE.get(str(pretrained_cfg.get("interpolation", "bicubic")), 3),
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(pretrained_cfg.get("mean", (0.485, 0.456, 0.406))),
        "image_std": list(pretrained_cfg.get("std", (0.229, 0.224, 0.225))),
        "image_processor_type": "ViTImageProcessor",
    }
    if crop_pct >= 1.0 or height != width:
        config["size"] = {"height": height, "width": width}
    else:
        config["size"] = {"shortest_edge": math.floor(height / crop_pct)}
        config["do_center_crop"] = True
        config["crop_size"] = {"height": height, "width": width}
    return config


def _not_timm_message(path: Path, tensors: StateDict) -> str:
    if any("embeddings.patch_embeddings" in name for name in tensors):
        return (
            f"{path}: holds Hugging Face ViT weights without their config.json: load the "
            "directory that holds both (config.json + this file) instead"
        )
    sample = ", ".join(sorted(tensors)[:5])
    return (
        f"{path}: not a ViT checkpoint vitkit knows (no patch_embed.proj.weight / pos_embed; "
        f"first keys: {sample}). Supported: HF directories, timm VisionTransformer state dicts, "
        "Google .npz files."
    )


def infer_config(
    tensors: StateDict,
    path: Path,
    num_attention_heads: int | None = None,
    checkpoint_image_size: ImageSize | None = None,
) -> ViTConfig:
    """The ViTConfig a timm VisionTransformer state dict was made with (see the module docstring)."""
    width, channels, patch_h, patch_w = tensors["patch_embed.proj.weight"].shape
    if patch_h != patch_w:
        raise CheckpointError(f"{path}: non-square patches {patch_h}x{patch_w} are not supported")
    depth = 1 + max(
        (int(m.group(1)) for name in tensors if (m := _BLOCK_INDEX.match(name))), default=-1
    )
    if depth == 0 or "blocks.0.mlp.fc1.weight" not in tensors:
        raise CheckpointError(f"{path}: no transformer blocks (blocks.0.*) found")
    head = tensors.get("head.weight")
    pre_logits = "pre_logits.fc.weight" in tensors
    return ViTConfig(
        hidden_size=width,
        num_hidden_layers=depth,
        num_attention_heads=num_attention_heads or heads_for_width(width),
        intermediate_size=tensors["blocks.0.mlp.fc1.weight"].shape[0],
        layer_norm_eps=TIMM_LAYER_NORM_EPS,
        image_size=_image_size(tensors["pos_embed"], patch_h, path, checkpoint_image_size),
        patch_size=patch_h,
        num_channels=channels,
        qkv_bias="blocks.0.attn.qkv.bias" in tensors,
        num_labels=head.shape[0] if head is not None else 0,
        add_pooling_layer=pre_logits,
        classifier_uses_pooler=pre_logits and head is not None and head.shape[0] > 0,
    )


def heads_for_width(width: int) -> int:
    if width in HEADS_BY_WIDTH:
        return HEADS_BY_WIDTH[width]
    if width % 64 == 0:
        return width // 64
    raise CheckpointError(
        f"cannot tell the number of attention heads of a width-{width} ViT: pass "
        "num_attention_heads=..."
    )


def _image_size(
    pos_embed: torch.Tensor, patch: int, path: Path, checkpoint_image_size: ImageSize | None
) -> ImageSize:
    positions = pos_embed.shape[1] - 1  # one [CLS] position
    if checkpoint_image_size is not None:
        height, width = to_pair(checkpoint_image_size)
        if (height // patch) * (width // patch) != positions:
            raise CheckpointError(
                f"{path}: pos_embed has {positions} patch positions, but image size "
                f"{height}x{width} with patch {patch} has {(height // patch) * (width // patch)}"
            )
        return (height, width) if height != width else height
    side = math.isqrt(positions)
    if side * side != positions:
        raise CheckpointError(
            f"{path}: pos_embed has {positions} patch positions, not a square grid: pass "
            "checkpoint_image_size=(height, width) to say what resolution it was trained at"
        )
    return side * patch
