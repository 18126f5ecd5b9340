"""MAE checkpoints: Hugging Face ``ViTMAEForPreTraining`` directories in and out.

What vitkit pre-trains is saved in the layout of the published ``facebook/vit-mae-*``
directories, which transformers loads with no conversion (``ViTMAEForPreTraining`` for more
pre-training, ``ViTMAEModel`` for the encoder)::

    vitkit MAE                       HF ViTMAEForPreTraining
    encoder.*                        vit.* (the ViT names of vitkit.checkpoints.hf)
    decoder_embed                    decoder.decoder_embed
    mask_token                       decoder.mask_token
    decoder_pos_embed                decoder.decoder_pos_embed
    decoder_blocks.i.norm1 / norm2   decoder.decoder_layers.i.layernorm_before / layernorm_after
    decoder_blocks.i.attn.qkv        decoder.decoder_layers.i.attention.attention.{query,key,value}
    decoder_blocks.i.attn.proj       decoder.decoder_layers.i.attention.output.dense
    decoder_blocks.i.mlp.fc1 / fc2   decoder.decoder_layers.i.intermediate.dense / output.dense
    decoder_norm / decoder_pred      decoder.decoder_norm / decoder.decoder_pred

Read back are that layout, what transformers 5's own ``save_pretrained`` writes (it spells the
decoder layers ``decoder.decoder_encoder.layer.i``) and transformers 5's module names
(``vit.layers.i.attention.q_proj``...). ``load_mae_encoder`` keeps the encoder alone (a headless
``ViT``: fine-tuning and embedding drop the decoder); ``load_mae`` keeps both for more
pre-training. timm's ``.mae`` weights and facebookresearch/mae's ``mae_pretrain_*.pth`` files are
encoder-only timm state dicts: ``vitkit.checkpoints.timm`` reads them as any headless ViT.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from vitkit.atomic_files import write_directory_atomically
from vitkit.checkpoints.directories import read_json
from vitkit.checkpoints.hf import default_processor_config, hf_reader, hf_state_dict
from vitkit.checkpoints.key_mapping import KeyReader, build_vit
from vitkit.checkpoints.overrides import apply_overrides
from vitkit.checkpoints.weight_files import StateDict, read_state_dict
from vitkit.errors import CheckpointError
from vitkit.models.config import ImageSize
from vitkit.models.mae import MAE, MAEConfig
from vitkit.models.vit import ViT

MODEL_TYPE = "vit_mae"
ARCHITECTURE = "ViTMAEForPreTraining"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PROCESSOR_NAME = "preprocessor_config.json"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_DECODER_LAYER = {  # vitkit Block module -> HF ViTMAELayer module
    "norm1": "layernorm_before",
    "attn.proj": "attention.output.dense",
    "norm2": "layernorm_after",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
_DECODER_TOP = {
    "decoder_embed.weight": "decoder.decoder_embed.weight",
    "decoder_embed.bias": "decoder.decoder_embed.bias",
    "mask_token": "decoder.mask_token",
    "decoder_pos_embed": "decoder.decoder_pos_embed",
    "decoder_norm.weight": "decoder.decoder_norm.weight",
    "decoder_norm.bias": "decoder.decoder_norm.bias",
    "decoder_pred.weight": "decoder.decoder_pred.weight",
    "decoder_pred.bias": "decoder.decoder_pred.bias",
}
# transformers 5 spellings -> the hub's, applied to every key before reading.
_TO_HUB_NAMES = [
    (r"^decoder\.decoder_encoder\.layer\.", "decoder.decoder_layers."),
    (r"^vit\.layers\.(\d+)\.", r"vit.encoder.layer.\1."),
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
]


# ---- config.json ----------------------------------------------------------------------------
def is_mae_config(data: Any) -> bool:
    """A config.json dict of model_type "vit_mae" (ours, transformers', facebook's)."""
    return isinstance(data, dict) and data.get("model_type") == MODEL_TYPE


def is_mae_directory(path: Path) -> bool:
    """A directory whose config.json is an MAE's."""
    config = path / CONFIG_NAME
    return config.is_file() and is_mae_config(read_json(config))


def config_from_hf_dict(data: Any, path: Path) -> MAEConfig:
    """The MAEConfig of a ViTMAE config.json; CheckpointError naming ``path`` if it is not one."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: holds a {type(data).__name__}, not a config dict")
    try:
        return MAEConfig.from_hf_dict(data)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: not a valid MAE config ({error})") from error


# ---- weights --------------------------------------------------------------------------------
def _read_hub_tensors(directory: Path) -> tuple[Path, StateDict]:
    for name in _WEIGHT_FILES:
        path = directory / name
        if path.is_file():
            return path, {_hub_name(key): t for key, t in read_state_dict(path).items()}
    raise CheckpointError(
        f"{directory}: no weights found (looked for {', '.join(_WEIGHT_FILES)}); an MAE "
        "directory holds config.json and model.safetensors"
    )


def _hub_name(name: str) -> str:
    for pattern, replacement in _TO_HUB_NAMES:
        name = re.sub(pattern, replacement, name)
    return name


def _split(tensors: StateDict) -> tuple[StateDict, StateDict]:
    """(encoder tensors with their vit. names, decoder tensors)."""
    encoder = {k: t for k, t in tensors.items() if not k.startswith("decoder.")}
    return encoder, {k: t for k, t in tensors.items() if k.startswith("decoder.")}


def has_decoder(directory: Path) -> bool:
    """True when an MAE directory's weights include the decoder (ViTMAEForPreTraining), False
    for an encoder alone (ViTMAEModel)."""
    _, tensors = _read_hub_tensors(directory)
    return any(name.startswith("decoder.") for name in tensors)


def load_mae_encoder(
    directory: Path,
    image_size: ImageSize | None = None,
    device: str | torch.device = "cpu",
    *,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[ViT, dict[str, Any] | None]:
    """(headless ViT encoder in eval mode, preprocessor config or None); the decoder is dropped.

    ``image_size`` resamples the position embeddings as for any ViT checkpoint; ``overrides``
    set the encoder's ViTConfig fields (``--model-arg``).
    """
    config_path = directory / CONFIG_NAME
    config = config_from_hf_dict(read_json(config_path), config_path)
    encoder = apply_overrides(config.encoder, overrides, config_path)
    weights_path, tensors = _read_hub_tensors(directory)
    encoder_tensors, _ = _split(tensors)
    reader = hf_reader(encoder_tensors, encoder)
    model = build_vit(encoder, reader, weights_path, image_size, device)
    return model, _processor(directory)


def load_mae(
    directory: Path, device: str | torch.device = "cpu"
) -> tuple[MAE, dict[str, Any] | None]:
    """(MAE with encoder and decoder, in eval mode, preprocessor config or None) for more
    pre-training. A directory without decoder weights (a ``ViTMAEModel``) is refused: start a new
    decoder with ``build_mae(config, load_mae_encoder(directory)[0])`` instead."""
    config_path = directory / CONFIG_NAME
    config = config_from_hf_dict(read_json(config_path), config_path)
    encoder, processor = load_mae_encoder(directory, device="cpu")
    weights_path, tensors = _read_hub_tensors(directory)
    _, decoder_tensors = _split(tensors)
    if not decoder_tensors:
        raise CheckpointError(
            f"{weights_path}: holds an MAE encoder without its decoder (a ViTMAEModel); "
            "pre-training from it starts a new decoder"
        )
    model = MAE(config, encoder)
    _load_decoder(model, decoder_tensors, weights_path)
    return model.to(device).eval(), processor


def _load_decoder(model: MAE, tensors: StateDict, source: Path) -> None:
    reader = KeyReader(tensors)
    for ours, theirs in _decoder_names(model.config):
        reader.move(theirs, ours)
    for index in range(model.config.decoder_num_hidden_layers):
        prefix = f"decoder.decoder_layers.{index}.attention.attention."
        for suffix in ("weight", "bias") if model.config.encoder.qkv_bias else ("weight",):
            parts = [reader.take(f"{prefix}{part}.{suffix}") for part in ("query", "key", "value")]
            if all(part is not None for part in parts):
                fused = torch.cat([p for p in parts if p is not None])
                reader.put(f"decoder_blocks.{index}.attn.qkv.{suffix}", fused, prefix + suffix)
    expected = {k: t.shape for k, t in model.state_dict().items() if not k.startswith("encoder.")}
    problems = [f"missing: {name}" for name in reader.missing]
    problems += [f"unexpected: {name}" for name in reader.unexpected()]
    problems += [
        f"{reader.origins[name]}: checkpoint {tuple(t.shape)}, model {tuple(expected[name])}"
        for name, t in reader.tensors.items()
        if name in expected and t.shape != expected[name]
    ]
    if problems:
        listed = "\n  ".join(problems[:20])
        raise CheckpointError(
            f"{source}: the decoder weights do not match its config.json "
            f"({len(problems)} problems):\n  {listed}"
        )
    with torch.no_grad():
        for name, tensor in reader.tensors.items():
            model.get_parameter(name).copy_(tensor)


def _decoder_names(config: MAEConfig) -> list[tuple[str, str]]:
    """(vitkit, HF) names of every decoder tensor but the fused attention projections."""
    names = list(_DECODER_TOP.items())
    for index in range(config.decoder_num_hidden_layers):
        for ours, theirs in _DECODER_LAYER.items():
            for suffix in ("weight", "bias"):
                names.append(
                    (
                        f"decoder_blocks.{index}.{ours}.{suffix}",
                        f"decoder.decoder_layers.{index}.{theirs}.{suffix}",
                    )
                )
    return names


def mae_state_dict(model: MAE) -> StateDict:
    """Every tensor of ``model`` under the hub's ViTMAEForPreTraining names (CPU, own storage)."""
    out = {f"vit.{name}": tensor for name, tensor in hf_state_dict(model.encoder).items()}
    ours = {n: t.detach().to("cpu").contiguous() for n, t in model.state_dict().items()}
    for our_name, their_name in _decoder_names(model.config):
        out[their_name] = ours[our_name]
    for index in range(model.config.decoder_num_hidden_layers):
        prefix = f"decoder.decoder_layers.{index}.attention.attention."
        for suffix in ("weight", "bias") if model.config.encoder.qkv_bias else ("weight",):
            fused = ours[f"decoder_blocks.{index}.attn.qkv.{suffix}"]
            for part, chunk in zip(("query", "key", "value"), fused.chunk(3), strict=True):
                out[f"{prefix}{part}.{suffix}"] = chunk.clone()  # safetensors refuses views
    return out


def save_mae(
    model: MAE, directory: str | Path, processor_config: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` as a ViTMAEForPreTraining directory (config.json, model.safetensors,
    preprocessor_config.json), atomically: transformers loads it with no conversion."""
    target = Path(directory).expanduser().absolute()
    if target.is_dir() and any(target.iterdir()) and not (target / CONFIG_NAME).is_file():
        raise CheckpointError(
            f"{target}: exists, is not empty and holds no config.json; refusing to replace it"
        )
    tensors = mae_state_dict(model)
    processor = processor_config or default_processor_config(model.config.encoder)

    def write(staging: Path) -> None:
        staging.mkdir()
        text = json.dumps(model.config.to_hf_dict(), indent=2, sort_keys=True) + "\n"
        (staging / CONFIG_NAME).write_text(text, encoding="utf-8")
        save_file(tensors, str(staging / WEIGHTS_NAME), metadata={"format": "pt"})
        (staging / PROCESSOR_NAME).write_text(
            json.dumps(processor, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )

    return write_directory_atomically(target, write)


def _processor(directory: Path) -> dict[str, Any] | None:
    path = directory / PROCESSOR_NAME
    return read_json(path) if path.is_file() else None
