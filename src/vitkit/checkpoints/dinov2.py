"""Hugging Face DINOv2 directories: ``Dinov2Model``, ``Dinov2WithRegistersModel`` and their
``*ForImageClassification`` heads (facebook/dinov2-*, facebook/dinov2-with-registers-*,
owkin/phikon-v2), read into a vitkit ViT.

The layout is what transformers writes with ``save_pretrained`` (checked against transformers 5,
which renames modules in memory but still writes these classic names; the in-memory names
``q_proj``/``o_proj``/``gate_proj``... are read too):

    embeddings.cls_token, embeddings.mask_token (unused at inference), embeddings.register_tokens
    embeddings.position_embeddings (1, 1 + rows*cols, D): [CLS] and the patches, never registers
    embeddings.patch_embeddings.projection.{weight,bias}
    encoder.layer.N.norm1 / norm2, attention.attention.{query,key,value}, attention.output.dense
    encoder.layer.N.layer_scale1.lambda1 / layer_scale2.lambda1        LayerScale
    encoder.layer.N.mlp.fc1 / fc2, or mlp.weights_in / weights_out   (use_swiglu_ffn)
    layernorm
    classifier (ForImageClassification, under a dinov2. / dinov2_with_registers. prefix): a linear
        layer on [CLS] concatenated with the mean patch token (2D inputs)

In vitkit terms: LayerScale always, ``use_swiglu_ffn`` with SiLU (the packed weights_in is
[gate; value], vitkit's fc1), ``global_pool`` "token" (the documented embedding: pooler_output, the
normalised [CLS]) or "avg+token" for the classifier. With registers, transformers adds the
[CLS] position to [CLS] before inserting the registers, which carry none: vitkit folds the [CLS]
position into the [CLS] token at load (the same float sum, so the same numbers) and keeps
position embeddings for the patches only (``no_embed_class``), as timm converts these weights.

Other input sizes: Dinov2Model resamples position embeddings with plain bicubic, the registers
model with antialiased bicubic (transformers' ``interpolate_pos_encoding``); vitkit follows each
(``dynamic_img_size``), at call time and when loading at another ``image_size``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from vitkit.checkpoints.directories import read_json, save_directory
from vitkit.checkpoints.hf import read_weights
from vitkit.checkpoints.key_mapping import KeyReader, build_vit
from vitkit.checkpoints.overrides import apply_overrides, read_config
from vitkit.checkpoints.weight_files import StateDict
from vitkit.errors import CheckpointError
from vitkit.models.config import ImageSize, ViTConfig
from vitkit.models.families import DINOV2, DINOV2_REGISTERS
from vitkit.models.vit import ViT

MODEL_TYPES = {"dinov2": DINOV2, "dinov2_with_registers": DINOV2_REGISTERS}
_PREFIXES = ("dinov2.", "dinov2_with_registers.")
# transformers 5's in-memory names -> the names its save_pretrained writes
_NEW_NAMES = {
    ".attention.q_proj.": ".attention.attention.query.",
    ".attention.k_proj.": ".attention.attention.key.",
    ".attention.v_proj.": ".attention.attention.value.",
    ".attention.o_proj.": ".attention.output.dense.",
    ".mlp.down_proj.": ".mlp.weights_out.",
}
_SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "relu", "silu")


def is_dinov2_directory(path: Path) -> bool:
    """A directory whose config.json describes a HF DINOv2 model (with or without registers)."""
    config = read_json(path / "config.json") if (path / "config.json").is_file() else None
    return isinstance(config, dict) and config.get("model_type") in MODEL_TYPES


def load_dinov2_directory(
    directory: Path,
    image_size: ImageSize | None = None,
    device: str | torch.device = "cpu",
    overrides: dict[str, Any] | None = None,
) -> tuple[ViT, dict[str, Any] | None]:
    """(model, preprocessor config or None) from a directory transformers wrote."""
    path = directory / "config.json"
    weights_path, tensors = read_weights(directory)
    tensors = _classic_names(_strip_prefix(tensors))
    config = apply_overrides(dinov2_config(read_json(path), tensors, path), overrides, path)
    reader = dinov2_reader(tensors, config)
    # transformers resamples at call time: loading at another size uses the same rule.
    model = build_vit(
        config, reader, weights_path, image_size, device, antialias=config.dynamic_img_size
    )
    processor = directory / "preprocessor_config.json"
    return model, (read_json(processor) if processor.is_file() else None)


def _strip_prefix(tensors: StateDict) -> StateDict:
    def strip(name: str) -> str:
        prefix = next((p for p in _PREFIXES if name.startswith(p)), "")
        return name[len(prefix) :]

    return {strip(name): tensor for name, tensor in tensors.items()}


def _classic_names(tensors: StateDict) -> StateDict:
    """transformers 5's in-memory names (q_proj, gate_proj/up_proj, ...) -> the on-disk ones."""
    renamed: StateDict = {}
    for name, tensor in tensors.items():
        for new, old in _NEW_NAMES.items():
            name = name.replace(new, old)
        renamed[name] = tensor
    for name in [n for n in renamed if ".mlp.gate_proj." in n]:
        up = name.replace(".gate_proj.", ".up_proj.")
        if up in renamed:  # SwiGLU split in two: pack [gate; value] as weights_in
            packed = torch.cat([renamed.pop(name), renamed.pop(up)], dim=0)
            renamed[name.replace(".gate_proj.", ".weights_in.")] = packed
    return renamed


def dinov2_config(data: Any, tensors: StateDict, path: Path) -> ViTConfig:
    """The ViTConfig of a DINOv2 config.json; the MLP width and the head are read off the weights."""
    if not isinstance(data, dict) or data.get("model_type") not in MODEL_TYPES:
        kind = data.get("model_type") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path}: model_type {kind!r} is not a DINOv2 model")
    swiglu = bool(data.get("use_swiglu_ffn", False))
    activation = "silu" if swiglu else data.get("hidden_act", "gelu")
    if activation not in _SUPPORTED_ACTIVATIONS:
        raise CheckpointError(
            f"{path}: hidden_act {activation!r} is not supported "
            f"(supported: {', '.join(_SUPPORTED_ACTIVATIONS)})"
        )
    fc2 = tensors.get(
        "encoder.layer.0.mlp.weights_out.weight" if swiglu else "encoder.layer.0.mlp.fc2.weight"
    )
    if fc2 is None:
        raise CheckpointError(
            f"{path}: the weights have no encoder.layer.0 MLP ({_mlp_names(swiglu)})"
        )
    classifier = tensors.get("classifier.weight")
    registers = int(data.get("num_register_tokens", 0)) if data["model_type"] != "dinov2" else 0
    patch = data.get("patch_size", 14)
    settings = {
        key: data[key]
        for key in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "hidden_dropout_prob",
            "attention_probs_dropout_prob",
            "initializer_range",
            "layer_norm_eps",
            "image_size",
            "num_channels",
            "qkv_bias",
            "drop_path_rate",
            "id2label",
        )
        if key in data
    }
    return read_config(
        {
            "layer_norm_eps": 1e-6,  # Dinov2Config's default
            **settings,
            "patch_size": patch[0] if isinstance(patch, list) else patch,
            "intermediate_size": fc2.shape[1],
            "hidden_act": activation,
            "use_swiglu_ffn": swiglu,
            "layerscale_value": float(data.get("layerscale_value", 1.0)),
            "num_register_tokens": registers,
            "no_embed_class": bool(registers),
            "dynamic_img_size": data["model_type"] == "dinov2_with_registers",
            "global_pool": "avg+token" if classifier is not None else "token",
            "num_labels": classifier.shape[0] if classifier is not None else 0,
            "add_pooling_layer": False,
            "architectures": data.get("architectures") or [],
            "family": MODEL_TYPES[data["model_type"]],
        },
        path,
    )


def _mlp_names(swiglu: bool) -> str:
    return "mlp.weights_in / weights_out" if swiglu else "mlp.fc1 / fc2"


def dinov2_reader(tensors: StateDict, config: ViTConfig) -> KeyReader:
    """A KeyReader holding DINOv2 ``tensors`` (no model prefix) in vitkit names."""
    reader = KeyReader(tensors)
    reader.foreign.pop("embeddings.mask_token", None)  # masked-image pre-training only
    reader.move("embeddings.patch_embeddings.projection.weight", "patch_embed.proj.weight")
    reader.move("embeddings.patch_embeddings.projection.bias", "patch_embed.proj.bias")
    _move_embeddings(reader, config)
    reader.move("layernorm.weight", "norm.weight")
    reader.move("layernorm.bias", "norm.bias")
    for index in range(config.num_hidden_layers):
        _move_layer(reader, index, config)
    if config.num_labels:
        reader.move("classifier.weight", "head.weight")
        reader.move("classifier.bias", "head.bias")
    return reader


def _move_embeddings(reader: KeyReader, config: ViTConfig) -> None:
    cls = reader.take("embeddings.cls_token")
    positions = reader.take("embeddings.position_embeddings")
    if config.num_register_tokens:
        reader.move("embeddings.register_tokens", "reg_token")
    if cls is None or positions is None:
        return
    if config.no_embed_class:  # fold [CLS]'s position into [CLS]: the sum transformers computes
        reader.put("cls_token", cls + positions[:, :1], "embeddings.cls_token (+ its position)")
        reader.put("pos_embed", positions[:, 1:], "embeddings.position_embeddings")
    else:
        reader.put("cls_token", cls, "embeddings.cls_token")
        reader.put("pos_embed", positions, "embeddings.position_embeddings")


def _move_layer(reader: KeyReader, index: int, config: ViTConfig) -> None:
    theirs, ours = f"encoder.layer.{index}.", f"blocks.{index}."
    attention = f"{theirs}attention.attention."
    for suffix in ("weight", "bias") if config.qkv_bias else ("weight",):
        parts = [reader.take(f"{attention}{part}.{suffix}") for part in ("query", "key", "value")]
        if all(part is not None for part in parts):
            fused = torch.cat([part for part in parts if part is not None])
            reader.put(
                f"{ours}attn.qkv.{suffix}", fused, f"{attention}{{query,key,value}}.{suffix}"
            )
    mlp_in, mlp_out = ("weights_in", "weights_out") if config.use_swiglu_ffn else ("fc1", "fc2")
    modules = [
        ("norm1", "norm1"),
        ("norm2", "norm2"),
        ("attention.output.dense", "attn.proj"),
        (f"mlp.{mlp_in}", "mlp.fc1"),
        (f"mlp.{mlp_out}", "mlp.fc2"),
    ]
    for their_module, our_module in modules:
        for suffix in ("weight", "bias"):
            reader.move(f"{theirs}{their_module}.{suffix}", f"{ours}{our_module}.{suffix}")
    reader.move(f"{theirs}layer_scale1.lambda1", f"{ours}ls1.gamma")
    reader.move(f"{theirs}layer_scale2.lambda1", f"{ours}ls2.gamma")


def default_processor_config(config: ViTConfig) -> dict[str, Any]:
    """facebook/dinov2-*'s preprocessing (BitImageProcessor) at the model's resolution: the
    shorter side to 256/224 of it (bicubic), a centre crop, ImageNet mean and std."""
    height, width = config.image_hw
    return {
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"shortest_edge": math.floor(min(height, width) * 256 / 224)},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": height, "width": width},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "image_processor_type": "BitImageProcessor",
    }


# ---- saving -----------------------------------------------------------------------------------
def dinov2_problem(config: ViTConfig) -> str | None:
    """Why transformers' Dinov2 classes cannot express ``config`` exactly, or None."""
    registers = config.num_register_tokens > 0
    needs = [
        (config.family.startswith(DINOV2), "not a DINOv2 model"),
        (config.class_token and config.layerscale_value is not None, "no [CLS] or LayerScale"),
        (not config.fc_norm and not config.add_pooling_layer, "fc_norm or a dense pooler"),
        (
            config.global_pool == ("avg+token" if config.num_labels else "token"),
            f"global_pool {config.global_pool!r} with {config.num_labels} classes",
        ),
        (config.dynamic_img_size == registers, "another position-embedding resampling rule"),
        (_mlp_ratio(config) is not None, f"an MLP width of {config.intermediate_size}"),
    ]
    return next((why for ok, why in needs if not ok), None)


def _mlp_ratio(config: ViTConfig) -> int | None:
    """The integer mlp_ratio (Dinov2Config accepts no other) giving ``intermediate_size``."""
    width = config.hidden_size
    for ratio in range(1, 17):
        hidden = int(width * ratio)
        if config.use_swiglu_ffn:  # transformers' Dinov2SwiGLUFFN rounding
            hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        if hidden == config.intermediate_size:
            return ratio
    return None


def save_dinov2(
    model: ViT, directory: str | Path, processor_config: dict[str, Any] | None = None
) -> Path:
    """Write a DINOv2 ``model`` as transformers' Dinov2Model / Dinov2WithRegistersModel
    directory (Dinov2[WithRegisters]ForImageClassification with a head); see ``dinov2_problem``."""
    config = model.config
    target = Path(directory).expanduser().absolute()
    problem = dinov2_problem(config)
    if problem is not None:
        raise CheckpointError(f"{target}: cannot be written as a DINOv2 directory: {problem}")
    processor = processor_config or default_processor_config(config)
    return save_directory(target, dinov2_config_dict(config), dinov2_state_dict(model), processor)


def dinov2_config_dict(config: ViTConfig) -> dict[str, Any]:
    registers = config.num_register_tokens > 0
    model_type = "dinov2_with_registers" if registers else "dinov2"
    base = "Dinov2WithRegisters" if registers else "Dinov2"
    labels = config.labels()
    data: dict[str, Any] = {
        "model_type": model_type,
        "architectures": [f"{base}ForImageClassification" if config.num_labels else f"{base}Model"],
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "mlp_ratio": _mlp_ratio(config),
        "hidden_act": "gelu" if config.use_swiglu_ffn else config.hidden_act,
        "use_swiglu_ffn": config.use_swiglu_ffn,
        "layerscale_value": config.layerscale_value,
        "layer_norm_eps": config.layer_norm_eps,
        "image_size": config.image_hw[0]
        if len(set(config.image_hw)) == 1
        else list(config.image_hw),
        "patch_size": config.patch_size,
        "num_channels": config.num_channels,
        "qkv_bias": config.qkv_bias,
        "hidden_dropout_prob": config.hidden_dropout_prob,
        "attention_probs_dropout_prob": config.attention_probs_dropout_prob,
        "drop_path_rate": config.drop_path_rate,
        "initializer_range": config.initializer_range,
        "id2label": {str(i): label for i, label in enumerate(labels)},
        "label2id": {label: i for i, label in enumerate(labels)},
    }
    if registers:
        data["num_register_tokens"] = config.num_register_tokens
    return data


def dinov2_state_dict(model: ViT) -> StateDict:
    """``model``'s tensors under the names transformers writes (see the module docstring).

    Prefix positions are folded into their tokens where the layout has no slot for them: the
    same float sums happen at run time, so the numbers do not change.
    """
    config = model.config
    ours = {name: t.detach().to("cpu") for name, t in model.state_dict().items()}
    prefix = (
        ("dinov2_with_registers." if config.num_register_tokens else "dinov2.")
        if config.num_labels
        else ""
    )
    out: StateDict = {}
    cls, positions = ours.pop("cls_token"), ours.pop("pos_embed")
    registers = ours.pop("reg_token", None)
    if not config.no_embed_class:  # fold the registers' positions; keep [CLS]'s
        if registers is not None:
            registers = registers + positions[:, 1 : 1 + config.num_register_tokens]
        positions = torch.cat([positions[:, :1], positions[:, config.num_prefix_tokens :]], dim=1)
    else:  # [CLS] already holds its position: transformers adds a zero one
        positions = torch.cat([torch.zeros_like(positions[:, :1]), positions], dim=1)
    out["embeddings.cls_token"] = cls
    out["embeddings.mask_token"] = torch.zeros(1, config.hidden_size)
    out["embeddings.position_embeddings"] = positions
    if registers is not None:
        out["embeddings.register_tokens"] = registers
    for ours_name, theirs in _module_names(config):
        for suffix in ("weight", "bias"):
            if f"{ours_name}.{suffix}" in ours:
                out[f"{theirs}.{suffix}"] = ours.pop(f"{ours_name}.{suffix}")
    for index in range(config.num_hidden_layers):
        attention = f"encoder.layer.{index}.attention.attention."
        for suffix in ("weight", "bias") if config.qkv_bias else ("weight",):
            chunks = ours.pop(f"blocks.{index}.attn.qkv.{suffix}").chunk(3, dim=0)
            for part, chunk in zip(("query", "key", "value"), chunks, strict=True):
                out[f"{attention}{part}.{suffix}"] = chunk.clone()
        out[f"encoder.layer.{index}.layer_scale1.lambda1"] = ours.pop(f"blocks.{index}.ls1.gamma")
        out[f"encoder.layer.{index}.layer_scale2.lambda1"] = ours.pop(f"blocks.{index}.ls2.gamma")
    if config.num_labels:
        out["classifier.weight"] = ours.pop("head.weight")
        out["classifier.bias"] = ours.pop("head.bias")
    if ours:  # a module without a name mapping here: fail loudly, never drop weights
        raise CheckpointError(f"no DINOv2 name for these ViT tensors: {sorted(ours)}")
    named = {
        (name if name.startswith("classifier.") else prefix + name): t for name, t in out.items()
    }
    return {name: tensor.contiguous() for name, tensor in named.items()}


def _module_names(config: ViTConfig) -> list[tuple[str, str]]:
    mlp_in, mlp_out = ("weights_in", "weights_out") if config.use_swiglu_ffn else ("fc1", "fc2")
    names = [
        ("patch_embed.proj", "embeddings.patch_embeddings.projection"),
        ("norm", "layernorm"),
    ]
    for index in range(config.num_hidden_layers):
        ours, theirs = f"blocks.{index}.", f"encoder.layer.{index}."
        names += [
            (ours + "norm1", theirs + "norm1"),
            (ours + "norm2", theirs + "norm2"),
            (ours + "attn.proj", theirs + "attention.output.dense"),
            (ours + "mlp.fc1", f"{theirs}mlp.{mlp_in}"),
            (ours + "mlp.fc2", f"{theirs}mlp.{mlp_out}"),
        ]
    return names
