"""DeiT students on disk: HF ``DeiTForImageClassificationWithTeacher`` directories.

transformers loads what this writes with no conversion, and vitkit reads what transformers writes:

    vitkit DistilledViT       HF DeiTForImageClassificationWithTeacher
    cls_token                 deit.embeddings.cls_token
    dist_token                deit.embeddings.distillation_token
    pos_embed (1, 2+N, D)     deit.embeddings.position_embeddings   (same order: CLS, dist, grid)
    patch_embed.proj          deit.embeddings.patch_embeddings.projection
    blocks.i.norm1 / norm2    deit.encoder.layer.i.layernorm_before / layernorm_after
    blocks.i.attn.qkv         deit.encoder.layer.i.attention.attention.{query,key,value} (split in 3)
    blocks.i.attn.proj        deit.encoder.layer.i.attention.output.dense
    blocks.i.mlp.fc1 / fc2    deit.encoder.layer.i.intermediate.dense / output.dense
    norm                      deit.layernorm
    head / head_dist          cls_classifier / distillation_classifier
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
from vitkit.checkpoints.hf import check_replaceable, read_weights
from vitkit.checkpoints.key_mapping import KeyReader, build_vit
from vitkit.checkpoints.overrides import apply_overrides
from vitkit.checkpoints.weight_files import StateDict
from vitkit.errors import CheckpointError
from vitkit.models.config import ImageSize, ViTConfig
from vitkit.models.deit import DeiTConfig, DistilledViT

ARCHITECTURE = "DeiTForImageClassificationWithTeacher"

# ---- HF DeiT layout ---------------------------------------------------------------------
_HF_BLOCK = "deit.encoder.layer.{i}."


_BLOCK_NAMES = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}


_TOP_NAMES = {
    "cls_token": "deit.embeddings.cls_token",
    "dist_token": "deit.embeddings.distillation_token",
    "pos_embed": "deit.embeddings.position_embeddings",
    "patch_embed.proj.weight": "deit.embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "deit.embeddings.patch_embeddings.projection.bias",
    "norm.weight": "deit.layernorm.weight",
    "norm.bias": "deit.layernorm.bias",
}
_HEAD_NAMES = {
    "head.weight": "cls_classifier.weight",
    "head.bias": "cls_classifier.bias",
    "head_dist.weight": "distillation_classifier.weight",
    "head_dist.bias": "distillation_classifier.bias",
}
_QKV_PARTS = ("query", "key", "value")


# transformers 5 names its modules differently from the hub files (it renames at load time);
# read either by mapping the new names back to the hub's.
_NEW_TO_HUB = [
    (r"^deit\.layers\.(\d+)\.", r"deit.encoder.layer.\1."),
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
]


def _names(config: DeiTConfig) -> list[tuple[str, str]]:
    """(vitkit, HF hub) names of every tensor but the fused QKV."""
    names = list(_TOP_NAMES.items())
    if config.num_labels:
        names += list(_HEAD_NAMES.items())
    for i in range(config.num_hidden_layers):
        prefix = _HF_BLOCK.format(i=i)
        for ours, theirs in _BLOCK_NAMES.items():
            for kind in ("weight", "bias"):
                names.append((f"blocks.{i}.{ours}.{kind}", f"{prefix}{theirs}.{kind}"))
    return names


def _qkv_kinds(config: DeiTConfig) -> tuple[str, ...]:
    return ("weight", "bias") if config.qkv_bias else ("weight",)


def to_hf_state_dict(model: DistilledViT) -> StateDict:
    """The student's weights under HF DeiT (hub) names, QKV split into query/key/value."""
    ours = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    out: StateDict = {theirs: ours.pop(mine) for mine, theirs in _names(model.config)}
    for i in range(model.config.num_hidden_layers):
        prefix = _HF_BLOCK.format(i=i)
        for kind in _qkv_kinds(model.config):
            chunks = ours.pop(f"blocks.{i}.attn.qkv.{kind}").chunk(3, dim=0)
            for part, chunk in zip(_QKV_PARTS, chunks, strict=True):
                # own storage: safetensors refuses views
                out[f"{prefix}attention.attention.{part}.{kind}"] = chunk.clone()
    if ours:  # a module added to the student without a name mapping: never drop weights
        raise CheckpointError(f"no HF DeiT name for these student tensors: {sorted(ours)}")
    return out


def deit_reader(hf_state: StateDict, config: DeiTConfig) -> KeyReader:
    """A KeyReader holding ``hf_state`` (hub or transformers-5 names) in vitkit names."""
    renamed: StateDict = {}
    for name, tensor in hf_state.items():
        for pattern, replacement in _NEW_TO_HUB:
            name = re.sub(pattern, replacement, name)
        renamed[name] = tensor
    reader = KeyReader(renamed)
    for ours, theirs in _names(config):
        reader.move(theirs, ours)
    for i in range(config.num_hidden_layers):
        prefix = f"{_HF_BLOCK.format(i=i)}attention.attention."
        for kind in _qkv_kinds(config):
            pieces = [reader.take(f"{prefix}{part}.{kind}") for part in _QKV_PARTS]
            present = [piece for piece in pieces if piece is not None]
            if len(present) == 3:
                origin = f"{prefix}{{query,key,value}}.{kind}"
                reader.put(f"blocks.{i}.attn.qkv.{kind}", torch.cat(present), origin)
    return reader


# ---- directories --------------------------------------------------------------------------
def is_student_config(data: Any) -> bool:
    """A config.json dict of a DeiT with a distillation head (ours or transformers')."""
    return (
        isinstance(data, dict)
        and data.get("model_type") == "deit"
        and ARCHITECTURE in (data.get("architectures") or [])
    )


def is_student_dir(directory: str | Path) -> bool:
    """True when ``directory`` holds a DeiT-with-teacher checkpoint (ours or transformers')."""
    config_path = Path(directory) / "config.json"
    return config_path.is_file() and is_student_config(read_json(config_path))


def save_student(
    model: DistilledViT, directory: str | Path, processor_config: dict[str, Any] | None = None
) -> Path:
    """Write an HF DeiT-with-teacher directory atomically (temp dir, then rename)."""
    target = Path(directory).expanduser().absolute()
    check_replaceable(target)
    tensors = to_hf_state_dict(model)

    def write(staging: Path) -> None:
        staging.mkdir()
        (staging / "config.json").write_text(json.dumps(model.config.to_hf_dict(), indent=2) + "\n")
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        if processor_config is not None:
            (staging / "preprocessor_config.json").write_text(
                json.dumps(processor_config, indent=2) + "\n"
            )

    return write_directory_atomically(target, write)


def load_student(
    directory: str | Path,
    image_size: ImageSize | None = None,
    device: str | torch.device = "cpu",
    *,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[DistilledViT, dict[str, Any] | None]:
    """(student in eval mode, preprocessor_config or None) from a DeiT-with-teacher directory.

    Every key problem (missing, unexpected, wrong shape) is listed in one CheckpointError;
    ``image_size`` resamples the position embeddings (the two prefix positions kept);
    ``overrides``: DeiTConfig fields config.json does not record (``--model-arg``).
    """
    path = Path(directory)
    if not is_student_dir(path):
        raise CheckpointError(
            f"{path}: no config.json for {ARCHITECTURE}; a distilled student is saved by "
            "`vitkit distill` (or transformers) in that layout"
        )
    data = read_json(path / "config.json")
    try:
        config = DeiTConfig.from_vit_config(ViTConfig.from_hf_dict(data))
    except (TypeError, ValueError) as error:
        raise CheckpointError(
            f"{path / 'config.json'}: not a valid DeiT config ({error})"
        ) from error
    config = apply_overrides(config, overrides, path / "config.json")
    weights_path, tensors = read_weights(path)
    reader = deit_reader(tensors, config)
    model = build_vit(config, reader, weights_path, image_size, device, DistilledViT)
    assert isinstance(model, DistilledViT)
    processor_path = path / "preprocessor_config.json"
    return model, (read_json(processor_path) if processor_path.is_file() else None)
