"""Hugging Face ViT directories: read them into a vitkit ViT, and write them back.

The layout is what ``transformers`` writes with ``save_pretrained`` (checked against transformers 5,
which still writes the classic key names below):

- ``ViTForImageClassification``: ``vit.embeddings.*``, ``vit.encoder.layer.N.*``, ``vit.layernorm.*``,
  ``classifier.*`` (no pooler).
- ``ViTModel`` (e.g. google/vit-large-patch16-224-in21k): the same keys without the ``vit.``
  prefix, plus ``pooler.dense.*``, and no head.

HF splits attention into separate query/key/value projections; vitkit fuses them into one ``qkv``
(rows stacked q, k, v: the order timm uses), so loading concatenates and saving splits.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vitkit.checkpoints.directories import check_replaceable, read_json, save_directory
from vitkit.checkpoints.key_mapping import KeyReader, build_vit
from vitkit.checkpoints.overrides import apply_overrides
from vitkit.checkpoints.weight_files import StateDict, read_state_dict
from vitkit.errors import CheckpointError
from vitkit.models.config import ImageSize, ViTConfig
from vitkit.models.vit import ViT

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PROCESSOR_NAME = "preprocessor_config.json"
# In order of preference; the index files describe sharded checkpoints.
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "relu")


# ---- names ----------------------------------------------------------------------------------
def _block_names(index: int) -> list[tuple[str, str]]:
    """(vitkit, HF without prefix) module names inside one transformer block, qkv excepted."""
    ours, theirs = f"blocks.{index}.", f"encoder.layer.{index}."
    return [
        (ours + "norm1", theirs + "layernorm_before"),
        (ours + "attn.proj", theirs + "attention.output.dense"),
        (ours + "norm2", theirs + "layernorm_after"),
        (ours + "mlp.fc1", theirs + "intermediate.dense"),
        (ours + "mlp.fc2", theirs + "output.dense"),
    ]


def _qkv_names(index: int) -> tuple[str, list[str]]:
    theirs = f"encoder.layer.{index}.attention.attention."
    return f"blocks.{index}.attn.qkv", [theirs + part for part in ("query", "key", "value")]


def _encoder_names(config: ViTConfig) -> list[tuple[str, str]]:
    """(vitkit, HF) names of every tensor outside the attention qkv, HF without the vit. prefix."""
    names = [
        ("cls_token", "embeddings.cls_token"),
        ("pos_embed", "embeddings.position_embeddings"),
        ("patch_embed.proj.weight", "embeddings.patch_embeddings.projection.weight"),
        ("patch_embed.proj.bias", "embeddings.patch_embeddings.projection.bias"),
    ]
    modules: list[tuple[str, str]] = [("norm", "layernorm")]
    for index in range(config.num_hidden_layers):
        modules += _block_names(index)
    if config.add_pooling_layer:
        modules.append(("pooler.dense", "pooler.dense"))
    for ours, theirs in modules:
        names += [(f"{ours}.weight", f"{theirs}.weight"), (f"{ours}.bias", f"{theirs}.bias")]
    return names


# ---- loading --------------------------------------------------------------------------------
def is_hf_directory(path: Path) -> bool:
    """A directory whose config.json describes a HF ViT (model_type "vit")."""
    config = read_json(path / CONFIG_NAME) if (path / CONFIG_NAME).is_file() else None
    return isinstance(config, dict) and config.get("model_type") == "vit"


def load_hf_directory(
    directory: Path,
    image_size: ImageSize | None = None,
    device: str | torch.device = "cpu",
    *,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[ViT, dict[str, Any] | None]:
    """(model, preprocessor config or None) from a directory transformers wrote."""
    data = read_json(directory / CONFIG_NAME)
    weights_path, tensors = read_weights(directory)
    config = _config_for(data, tensors, directory / CONFIG_NAME)
    config = apply_overrides(config, overrides, directory / CONFIG_NAME)
    reader = hf_reader(tensors, config)
    model = build_vit(config, reader, weights_path, image_size, device)
    processor = directory / PROCESSOR_NAME
    return model, (read_json(processor) if processor.is_file() else None)


def read_weights(directory: Path) -> tuple[Path, StateDict]:
    for name in _WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            return path, _read_sharded(path)
        return path, read_state_dict(path)
    present = ", ".join(sorted(p.name for p in directory.iterdir())) or "nothing"
    raise CheckpointError(
        f"{directory}: no PyTorch weights found (looked for {', '.join(_WEIGHT_FILES)}; the "
        f"directory holds: {present}). TensorFlow/Flax-only checkpoints must be converted with "
        "transformers first."
    )


def _read_sharded(index_path: Path) -> StateDict:
    index = read_json(index_path)
    shards = sorted(set(index.get("weight_map", {}).values()))
    if not shards:
        raise CheckpointError(f"{index_path}: its weight_map lists no shard files")
    tensors: StateDict = {}
    for shard in shards:
        shard_path = index_path.parent / shard
        if not shard_path.is_file():
            raise CheckpointError(
                f"{index_path}: shard {shard} is missing from {index_path.parent}"
            )
        tensors.update(read_state_dict(shard_path))
    return tensors


def _config_for(data: Any, tensors: StateDict, path: Path) -> ViTConfig:
    """The ViTConfig of config.json, with the pooler and head decided by what the weights hold
    wherever config.json does not say (it cannot: HF has no add_pooling_layer field)."""
    if not isinstance(data, dict) or data.get("model_type", "vit") != "vit":
        kind = data.get("model_type") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path}: model_type {kind!r} is not a ViT (expected 'vit')")
    data = dict(data)
    patch = data.get("patch_size", 16)
    if isinstance(patch, list):
        if len(set(patch)) != 1:
            raise CheckpointError(f"{path}: non-square patch_size {patch} is not supported")
        data["patch_size"] = patch[0]
    if data.get("hidden_act", "gelu") not in _SUPPORTED_ACTIVATIONS:
        raise CheckpointError(
            f"{path}: hidden_act {data['hidden_act']!r} is not supported "
            f"(supported: {', '.join(_SUPPORTED_ACTIVATIONS)})"
        )
    names = {_strip_prefix(name) for name in tensors}
    if "add_pooling_layer" not in data:
        data["add_pooling_layer"] = "pooler.dense.weight" in names
    if not data.get("architectures") and "classifier.weight" not in names:
        data["architectures"] = ["ViTModel"]  # no head in the weights: nothing to classify with
    try:
        return ViTConfig.from_hf_dict(data)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: not a valid ViT config ({error})") from error


def _strip_prefix(name: str) -> str:
    return name[len("vit.") :] if name.startswith("vit.") else name


def hf_reader(tensors: StateDict, config: ViTConfig) -> KeyReader:
    """A KeyReader holding ``tensors`` (HF names, with or without ``vit.``) in vitkit names."""
    prefixed = any(name.startswith("vit.") for name in tensors)
    reader = KeyReader({_strip_prefix(name): tensor for name, tensor in tensors.items()})
    for ours, theirs in _encoder_names(config):
        reader.move(theirs, ours)
    for index in range(config.num_hidden_layers):
        _fuse_qkv(reader, index, config.qkv_bias)
    if config.num_labels:
        reader.move("classifier.weight", "head.weight")
        reader.move("classifier.bias", "head.bias")
    if prefixed:
        # Report names as they appear in the file.
        reader.missing = [_with_prefix(name) for name in reader.missing]
        reader.foreign = {_with_prefix(name): t for name, t in reader.foreign.items()}
        reader.origins = {ours: _with_prefix(theirs) for ours, theirs in reader.origins.items()}
    return reader


def _with_prefix(name: str) -> str:
    return name if name.startswith("classifier.") else f"vit.{name}"


def _fuse_qkv(reader: KeyReader, index: int, bias: bool) -> None:
    ours, parts = _qkv_names(index)
    for suffix in ("weight", "bias") if bias else ("weight",):
        pieces = [reader.take(f"{part}.{suffix}") for part in parts]
        present = [piece for piece in pieces if piece is not None]
        if len(present) == len(pieces):
            origin = f"{parts[0].rpartition('.')[0]}.{{query,key,value}}.{suffix}"
            reader.put(f"{ours}.{suffix}", torch.cat(present, dim=0), origin)


# ---- saving ---------------------------------------------------------------------------------
def hf_state_dict(model: ViT) -> StateDict:
    """The model's tensors under the names transformers uses (see the module docstring).

    CPU tensors are the model's own (not copies), except the QKV chunks: for saving, not for
    keeping while the model trains on.
    """
    config = model.config
    # No copy of tensors already on the CPU and contiguous: saving ViT-L must not hold its
    # 1.2 GB of weights twice. Only the fused QKV chunks below get storage of their own.
    ours = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    prefix = "vit." if config.num_labels else ""
    out: StateDict = {}
    for our_name, their_name in _encoder_names(config):
        out[prefix + their_name] = ours.pop(our_name)
    for index in range(config.num_hidden_layers):
        our_name, parts = _qkv_names(index)
        for suffix in ("weight", "bias") if config.qkv_bias else ("weight",):
            for part, chunk in zip(
                parts, ours.pop(f"{our_name}.{suffix}").chunk(3, dim=0), strict=True
            ):
                # own storage: safetensors refuses views
                out[f"{prefix}{part}.{suffix}"] = chunk.clone()
    if config.num_labels:
        out["classifier.weight"] = ours.pop("head.weight")
        out["classifier.bias"] = ours.pop("head.bias")
    if ours:  # a module added to ViT without a name mapping here: fail loudly, never drop weights
        raise CheckpointError(f"no Hugging Face name for these ViT tensors: {sorted(ours)}")
    return out


def default_processor_config(config: ViTConfig) -> dict[str, Any]:
    """transformers' ViTImageProcessor defaults at the model's resolution."""
    height, width = config.image_hw
    return {
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "ViTImageProcessor",
        "image_std": [0.5, 0.5, 0.5],
        "resample": 2,
        "rescale_factor": 1 / 255,
        "size": {"height": height, "width": width},
    }


def save_pretrained(
    model: ViT, directory: str | Path, processor_config: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` as a HF directory (config.json, model.safetensors, preprocessor_config.json).

    transformers loads it with ``ViTForImageClassification.from_pretrained`` (models with a head)
    or ``ViTModel.from_pretrained`` (headless models). The directory is written beside the target
    under a temporary name and renamed into place (``directories.save_directory``).

    Two vitkit models have no exact transformers equivalent; both are saved, with a warning:
    a head that reads the pre-logits/pooler output (``classifier_uses_pooler``: the in21k
    pre-training head of Google's .npz files) is written as ViTForImageClassification plus
    ``vit.pooler.*`` keys, which vitkit reloads exactly but transformers ignores; and a headless
    model without a pooler, which transformers must load with ``add_pooling_layer=False``.
    A model with LayerScale, registers, SwiGLU, ... (``config.variant_features``) is refused:
    ``vitkit.checkpoints.save_pretrained`` writes those as DINOv2 or timm directories.
    """
    target = Path(directory).expanduser().absolute()
    if model.config.variant_features:
        raise CheckpointError(
            f"{target}: transformers' ViT cannot express {', '.join(model.config.variant_features)}"
            ": save with vitkit.checkpoints.save_pretrained (DINOv2 or timm layout)"
        )
    check_replaceable(target)
    _warn_if_lossy(model.config, target)
    processor = processor_config or default_processor_config(model.config)
    return save_directory(target, model.config.to_hf_dict(), hf_state_dict(model), processor)


def _warn_if_lossy(config: ViTConfig, target: Path) -> None:
    if config.num_labels and config.classifier_uses_pooler:
        warnings.warn(
            f"{target}: this model's head reads the pre-logits (pooler) output, which "
            "transformers' ViTForImageClassification cannot express: vitkit reloads it exactly, "
            "but transformers will ignore vit.pooler.* and give different logits.",
            UserWarning,
            stacklevel=3,
        )
    elif not config.num_labels and not config.add_pooling_layer:
        warnings.warn(
            f"{target}: headless model without a pooler: load it in transformers with "
            "ViTModel.from_pretrained(path, add_pooling_layer=False), or transformers adds a "
            "randomly initialised pooler.",
            UserWarning,
            stacklevel=3,
        )
