"""timm ``VisionTransformer`` state dicts (.safetensors / .pth / .bin), config inferred from shapes.

vitkit's parameter names are timm's, so loading is mostly reading the architecture off the tensor
shapes (what timm's ``checkpoint_filter_fn`` leaves to the model definition):

- patch size, channels and width from ``patch_embed.proj.weight`` (width, channels, p, p);
- depth from the ``blocks.N`` indices; MLP width from ``blocks.0.mlp.fc1/fc2``: an fc1 twice as
  wide as fc2's input is timm's ``SwiGLUPacked`` (with SiLU, as UNI2-h, Virchow and DINOv2-g use);
- [CLS] from ``cls_token``, register tokens from ``reg_token`` (1, n, width), LayerScale from
  ``blocks.0.ls1.gamma`` (its trained values load; ``init_values`` only matters for training),
  ``fc_norm`` from ``fc_norm.weight`` (then ``global_pool`` is "avg", timm's pairing);
- the training resolution and ``no_embed_class`` from ``pos_embed``: rows*cols positions
  (patches only) or prefix + rows*cols (a square grid is assumed unless
  ``checkpoint_image_size`` says otherwise);
- classes from ``head.weight`` (no head, or an empty one, means a feature extractor);
- ``pre_logits.fc`` (the representation layer of timm's older in21k weights) becomes the pooler,
  and the head then reads it (``classifier_uses_pooler``).

The number of attention heads leaves no trace in any shape. It comes from ``num_attention_heads``
if given, else timm's own model definitions (``HEADS_BY_WIDTH``: ViT-Ti 3, S 6, B 12, L 16,
H 16, ...), else a head width of 64 (the paper's choice for every size but Huge). Nor do
``global_pool`` without ``fc_norm``, the activation or ``dynamic_img_size``: timm's defaults
(token, GELU, off) apply unless the directory's config.json (``model_args``) or ``overrides``
(``--model-arg KEY=VALUE``) say otherwise. LayerNorm eps is timm's 1e-6. The published family is
named from the shapes (``vitkit.models.families``), which sets a headless model's embedding.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from vitkit.checkpoints.directories import read_json, save_directory
from vitkit.checkpoints.hf import default_processor_config
from vitkit.checkpoints.key_mapping import KeyReader, build_vit
from vitkit.checkpoints.overrides import apply_overrides, check_setting_names, read_config
from vitkit.checkpoints.weight_files import StateDict, read_state_dict
from vitkit.errors import CheckpointError
from vitkit.models.config import ImageSize, ViTConfig, resolve_aliases, to_pair
from vitkit.models.families import with_family
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
# timm's VisionTransformer keyword (config.json "model_args") -> ViTConfig field
_MODEL_ARGS = {
    "num_heads": "num_attention_heads",
    "init_values": "layerscale_value",
    "reg_tokens": "num_register_tokens",
    "class_token": "class_token",
    "no_embed_class": "no_embed_class",
    "global_pool": "global_pool",
    "fc_norm": "fc_norm",
    "dynamic_img_size": "dynamic_img_size",
    "act_layer": "hidden_act",
}
_TIMM_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "silu": "silu", "swish": "silu"}


def looks_like_timm(tensors: StateDict) -> bool:
    return "patch_embed.proj.weight" in tensors and "pos_embed" in tensors


def load_timm_file(
    path: Path,
    image_size: ImageSize | None = None,
    device: str | torch.device = "cpu",
    num_attention_heads: int | None = None,
    checkpoint_image_size: ImageSize | None = None,
    overrides: dict[str, Any] | None = None,
) -> ViT:
    """A ViT from one timm state dict file (.safetensors / .pth / .bin).

    ``overrides``: ViTConfig fields the shapes cannot tell (``global_pool``, ``hidden_act``,
    ``num_attention_heads``, ...), timm's keyword names accepted too (``init_values``).
    """
    tensors = read_state_dict(path)
    overrides = _with_heads(overrides, num_attention_heads)
    if checkpoint_image_size is None and image_size is not None:
        checkpoint_image_size = _requested_if_it_fits(tensors, image_size, overrides)
    config = _config_or_error(tensors, path, overrides, checkpoint_image_size)
    return _build(config, tensors, path, image_size, device)


def _with_heads(overrides: dict[str, Any] | None, heads: int | None) -> dict[str, Any]:
    overrides = dict(overrides or {})
    if heads is not None:
        overrides["num_attention_heads"] = heads
    return overrides


def _requested_if_it_fits(
    tensors: StateDict, image_size: ImageSize, overrides: dict[str, Any]
) -> ImageSize | None:
    """A non-square checkpoint loaded at its own size: the requested size names its grid."""
    if not looks_like_timm(tensors):
        return None
    patch = tensors["patch_embed.proj.weight"].shape[-1]
    height, width = to_pair(image_size)
    wanted = (height // patch) * (width // patch)
    for positions in _candidate_grid_positions(tensors, overrides):
        square = math.isqrt(positions) ** 2 == positions
        if wanted == positions and not square:
            return image_size
    return None


def _prefix_tokens(tensors: StateDict) -> int:
    registers = tensors["reg_token"].shape[1] if "reg_token" in tensors else 0
    return int("cls_token" in tensors) + registers


def _candidate_grid_positions(tensors: StateDict, overrides: dict[str, Any]) -> list[int]:
    """Patch positions in pos_embed: with the prefix tokens' positions removed, or all of them
    (``no_embed_class``), as far as the file or the overrides leave it open."""
    total, prefix = tensors["pos_embed"].shape[1], _prefix_tokens(tensors)
    if "no_embed_class" in overrides:
        return [total if overrides["no_embed_class"] else total - prefix]
    return [total - prefix, total] if prefix else [total]


def _config_or_error(
    tensors: StateDict,
    path: Path,
    overrides: dict[str, Any],
    checkpoint_image_size: ImageSize | None,
) -> ViTConfig:
    if not looks_like_timm(tensors):
        raise CheckpointError(_not_timm_message(path, tensors))
    return infer_config(
        tensors, path, overrides=overrides, checkpoint_image_size=checkpoint_image_size
    )


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
    return build_vit(config, reader, path, image_size, device)


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
    overrides: dict[str, Any] | None = None,
) -> tuple[ViT, dict[str, Any]]:
    """(model, preprocessor config) from timm's Hub layout, e.g. timm/vit_base_patch16_224.augreg2_in21k_ft_in1k
    or MahmoodLab/UNI2-h: ``model_args`` of config.json say what the shapes cannot."""
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
    architecture = str(data.get("architecture", ""))
    if not architecture.startswith(("vit_", "deit_")):
        raise CheckpointError(
            f"{directory / 'config.json'}: timm architecture {data.get('architecture')!r} is not a "
            "plain VisionTransformer (vit_*)"
        )
    tensors = read_state_dict(weights)
    pretrained_cfg = data.get("pretrained_cfg") or {}
    overrides = _with_heads(overrides, num_attention_heads)
    if not looks_like_timm(tensors):
        raise CheckpointError(_not_timm_message(weights, tensors))
    if isinstance(data.get("vitkit_config"), dict):  # vitkit's own save: the whole config
        config = apply_overrides(read_config(data["vitkit_config"], directory), overrides, weights)
    else:
        settings = {**config_from_model_args(data), **overrides}
        config = infer_config(
            tensors,
            weights,
            overrides=settings,
            checkpoint_image_size=_input_size(pretrained_cfg, tensors, settings),
            architecture=architecture,
        )
    names = data.get("label_names")
    if isinstance(names, list) and len(names) == config.num_labels:
        config = config.replace(id2label=dict(enumerate(map(str, names))))
    model = _build(config, tensors, weights, image_size, device)
    processor = directory / "preprocessor_config.json"
    if processor.is_file():  # vitkit's saves carry the exact preprocessing
        return model, read_json(processor)
    return model, processor_config_from_timm(pretrained_cfg, config.image_hw)


def config_from_model_args(data: dict[str, Any]) -> dict[str, Any]:
    """The ViTConfig fields a timm config.json states (``model_args``, top-level
    ``global_pool``)."""
    model_args = data.get("model_args") or {}
    args = {**({"global_pool": data["global_pool"]} if "global_pool" in data else {}), **model_args}
    settings: dict[str, Any] = {}
    for key, field in _MODEL_ARGS.items():
        value = args.get(key)
        if value is None or (key == "global_pool" and value == ""):
            continue  # timm's "let the default decide" (fc_norm None, global_pool "")
        if key == "act_layer":
            if not isinstance(value, str) or value not in _TIMM_ACTIVATIONS:
                continue  # a Python class in code, not in the file: the shapes decide
            value = _TIMM_ACTIVATIONS[value]
        settings[field] = value
    return settings


def _input_size(
    pretrained_cfg: dict[str, Any], tensors: StateDict, settings: dict[str, Any]
) -> tuple[int, int] | None:
    size = pretrained_cfg.get("input_size")
    if not (isinstance(size, list | tuple) and len(size) == 3):
        return None
    height, width = int(size[1]), int(size[2])
    patch = (
        tensors["patch_embed.proj.weight"].shape[-1] if "patch_embed.proj.weight" in tensors else 0
    )
    if not patch or "pos_embed" not in tensors:
        return None
    wanted = (height // patch) * (width // patch)
    if wanted not in _candidate_grid_positions(tensors, settings):
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
            f"{path}: holds Hugging Face weights without their config.json: load the "
            "directory that holds both (config.json + this file) instead"
        )
    sample = ", ".join(sorted(tensors)[:5])
    return (
        f"{path}: not a ViT checkpoint vitkit knows (no patch_embed.proj.weight / pos_embed; "
        f"first keys: {sample}). Supported: HF ViT and DINOv2 directories, timm "
        "VisionTransformer state dicts, Google .npz files."
    )


def infer_config(
    tensors: StateDict,
    path: Path,
    num_attention_heads: int | None = None,
    checkpoint_image_size: ImageSize | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    architecture: str = "",
) -> ViTConfig:
    """The ViTConfig a timm VisionTransformer state dict was made with (see the module docstring).

    ``overrides`` set what the shapes cannot tell (and win over what they suggest); a value
    that contradicts the weights shows up as a shape mismatch when the model is built.
    """
    overrides = _with_heads(overrides, num_attention_heads)
    check_setting_names(overrides, path)
    width, channels, patch_h, patch_w = tensors["patch_embed.proj.weight"].shape
    if patch_h != patch_w:
        raise CheckpointError(f"{path}: non-square patches {patch_h}x{patch_w} are not supported")
    depth = 1 + max(
        (int(m.group(1)) for name in tensors if (m := _BLOCK_INDEX.match(name))), default=-1
    )
    if depth == 0 or "blocks.0.mlp.fc1.weight" not in tensors:
        raise CheckpointError(f"{path}: no transformer blocks (blocks.0.*) found")
    settings = {**_shape_settings(tensors, width), **resolve_aliases(overrides)}
    heads = settings.pop("num_attention_heads", None) or heads_for_width(width)
    no_embed_class, image_size = _grid(tensors, patch_h, path, overrides, checkpoint_image_size)
    settings.setdefault("no_embed_class", no_embed_class)
    try:
        config = ViTConfig(
            hidden_size=width,
            num_hidden_layers=depth,
            num_attention_heads=heads,
            layer_norm_eps=TIMM_LAYER_NORM_EPS,
            image_size=image_size,
            patch_size=patch_h,
            num_channels=channels,
            **settings,
        )
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: {error} (check the --model-arg overrides)") from error
    return with_family(config, architecture)


def _shape_settings(tensors: StateDict, width: int) -> dict[str, Any]:
    """ViTConfig fields the tensor shapes decide (see the module docstring)."""
    fc1_width = tensors["blocks.0.mlp.fc1.weight"].shape[0]
    fc2_input = tensors["blocks.0.mlp.fc2.weight"].shape[1]
    swiglu = fc1_width == 2 * fc2_input
    head = tensors.get("head.weight")
    num_labels = head.shape[0] if head is not None else 0
    pre_logits = "pre_logits.fc.weight" in tensors
    fc_norm = "fc_norm.weight" in tensors
    class_token = "cls_token" in tensors
    if head is not None and num_labels and head.shape[1] == 2 * width:
        global_pool = "avg+token"  # a head on [CLS] + mean patch token (vitkit's saves)
    else:
        global_pool = "avg" if fc_norm or not class_token else "token"
    return {
        "intermediate_size": fc2_input,
        "use_swiglu_ffn": swiglu,
        "hidden_act": "silu" if swiglu else "gelu",
        "qkv_bias": "blocks.0.attn.qkv.bias" in tensors,
        "num_labels": num_labels,
        "add_pooling_layer": pre_logits,
        "classifier_uses_pooler": pre_logits and num_labels > 0,
        "layerscale_value": 1e-5 if "blocks.0.ls1.gamma" in tensors else None,
        "num_register_tokens": tensors["reg_token"].shape[1] if "reg_token" in tensors else 0,
        "class_token": class_token,
        "fc_norm": fc_norm,
        "global_pool": global_pool,
    }


def heads_for_width(width: int) -> int:
    if width in HEADS_BY_WIDTH:
        return HEADS_BY_WIDTH[width]
    if width % 64 == 0:
        return width // 64
    raise CheckpointError(
        f"cannot tell the number of attention heads of a width-{width} ViT: pass "
        "num_attention_heads=... (--model-arg num_attention_heads=N)"
    )


def _grid(
    tensors: StateDict,
    patch: int,
    path: Path,
    overrides: dict[str, Any],
    checkpoint_image_size: ImageSize | None,
) -> tuple[bool, ImageSize]:
    """(no_embed_class, training image size) from pos_embed's length."""
    total, prefix = tensors["pos_embed"].shape[1], _prefix_tokens(tensors)
    candidates = _candidate_grid_positions(tensors, overrides)
    if checkpoint_image_size is not None:
        height, width = to_pair(checkpoint_image_size)
        positions = (height // patch) * (width // patch)
        if positions not in candidates:
            raise CheckpointError(
                f"{path}: pos_embed has {total} positions ({prefix} prefix tokens), but image "
                f"size {height}x{width} with patch {patch} has {positions} patches"
            )
        size: ImageSize = (height, width) if height != width else height
        return positions == total and prefix > 0, size
    squares = [n for n in candidates if math.isqrt(n) ** 2 == n]
    if not squares:
        raise CheckpointError(
            f"{path}: pos_embed has {total} positions ({prefix} prefix tokens), not a square "
            "grid: pass checkpoint_image_size=(height, width) to say what resolution it was "
            "trained at"
        )
    if len(squares) > 1:
        raise CheckpointError(
            f"{path}: pos_embed's {total} positions fit a square grid with or without the "
            f"{prefix} prefix tokens, so whether they have positions of their own cannot be "
            "inferred: pass no_embed_class=true or false (--model-arg no_embed_class=true)"
        )
    positions = squares[0]
    return positions == total and prefix > 0, math.isqrt(positions) * patch


# ---- saving: timm's Hub layout, for the models transformers cannot express ------------------
def save_timm_directory(
    model: ViT, directory: str | Path, processor_config: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` as timm's Hub layout: config.json (architecture + model_args), the state
    dict under timm's names (which are vitkit's), preprocessor_config.json.

    vitkit reloads it exactly (the whole ViTConfig travels as ``vitkit_config``). timm builds it
    with ``timm.create_model(architecture, pretrained=True, pretrained_cfg_overlay=dict(
    file=".../model.safetensors"), **model_args)``; a SwiGLU MLP also needs
    ``mlp_layer=timm.layers.SwiGLUPacked`` in that call (a class cannot be written to JSON: the
    published UNI2-h and Virchow cards pass it the same way).
    """
    config = model.config
    processor = processor_config or default_processor_config(config)
    tensors = {
        _TIMM_NAMES.get(name, name): tensor.detach().to("cpu").contiguous()
        for name, tensor in model.state_dict().items()
    }
    data = {
        "architecture": "vit_base_patch16_224",  # every size and feature set by model_args
        "num_classes": config.num_labels,
        "num_features": config.hidden_size,
        "global_pool": config.global_pool,
        "model_args": timm_model_args(config),
        "pretrained_cfg": _pretrained_cfg(processor, config),
        "label_names": config.labels(),
        "vitkit_config": config.to_hf_dict(),
    }
    target = Path(directory).expanduser().absolute()
    return save_directory(target, data, tensors, processor)


_TIMM_NAMES = {ours: theirs for theirs, ours in _PRE_LOGITS.items()}


def timm_model_args(config: ViTConfig) -> dict[str, Any]:
    """timm VisionTransformer keywords that build ``config``'s architecture."""
    fc1_width = config.intermediate_size * (2 if config.use_swiglu_ffn else 1)
    args: dict[str, Any] = {
        "img_size": list(config.image_hw),
        "patch_size": config.patch_size,
        "in_chans": config.num_channels,
        "embed_dim": config.hidden_size,
        "depth": config.num_hidden_layers,
        "num_heads": config.num_attention_heads,
        "mlp_ratio": fc1_width / config.hidden_size,
        "qkv_bias": config.qkv_bias,
        "num_classes": config.num_labels,
        "class_token": config.class_token,
        "no_embed_class": config.no_embed_class,
        "reg_tokens": config.num_register_tokens,
        "fc_norm": config.fc_norm,
        "dynamic_img_size": config.dynamic_img_size,
        "act_layer": {"gelu_new": "gelu_tanh"}.get(config.hidden_act, config.hidden_act),
    }
    if config.global_pool in ("token", "avg"):  # timm has no "avg+token" head
        args["global_pool"] = config.global_pool
    if config.layerscale_value is not None:
        args["init_values"] = config.layerscale_value
    return args


def _pretrained_cfg(processor: dict[str, Any], config: ViTConfig) -> dict[str, Any]:
    height, width = config.image_hw
    resample = {code: name for name, code in _RESAMPLE.items()}
    return {
        "input_size": [config.num_channels, height, width],
        "mean": list(processor.get("image_mean", (0.5, 0.5, 0.5))),
        "std": list(processor.get("image_std", (0.5, 0.5, 0.5))),
        "interpolation": resample.get(int(processor.get("resample", 3)), "bicubic"),
        "crop_pct": 1.0,
        "num_classes": config.num_labels,
    }
