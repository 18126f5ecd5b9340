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
from pathlib import Path
from typing import Any

import torch

from vitkit.errors import CheckpointError
from vitkit.models.config import ViTConfig
from vitkit.models.deit import DistilledViT

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
    "head.weight": "cls_classifier.weight",
    "head.bias": "cls_classifier.bias",
    "head_dist.weight": "distillation_classifier.weight",
    "head_dist.bias": "distillation_classifier.bias",
}


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


def to_hf_state_dict(model: DistilledViT) -> dict[str, torch.Tensor]:
    """The student's weights under HF DeiT (hub) names, QKV split into query/key/value."""
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for name, hf_name in _TOP_NAMES.items():
        if name in state:
            out[hf_name] = state[name]
    for i in range(model.config.num_hidden_layers):
        prefix = _HF_BLOCK.format(i=i)
        for ours, theirs in _BLOCK_NAMES.items():
            for kind in ("weight", "bias"):
                out[f"{prefix}{theirs}.{kind}"] = state[f"blocks.{i}.{ours}.{kind}"]
        for kind in ("weight", "bias"):
            key = f"blocks.{i}.attn.qkv.{kind}"
            if key not in state:
                continue
            query, key_part, value = state[key].chunk(3, dim=0)
            for part, tensor in (("query", query), ("key", key_part), ("value", value)):
                out[f"{prefix}attention.attention.{part}.{kind}"] = tensor
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def from_hf_state_dict(
    hf_state: dict[str, torch.Tensor], num_layers: int
) -> dict[str, torch.Tensor]:
    """The inverse of ``to_hf_state_dict``; accepts hub names and transformers-5 module names."""
    renamed: dict[str, torch.Tensor] = {}
    for name, tensor in hf_state.items():
        for pattern, replacement in _NEW_TO_HUB:
            name = re.sub(pattern, replacement, name)
        renamed[name] = tensor
    ours: dict[str, torch.Tensor] = {}
    for name, hf_name in _TOP_NAMES.items():
        if hf_name in renamed:
            ours[name] = renamed.pop(hf_name)
    for i in range(num_layers):
        prefix = _HF_BLOCK.format(i=i)
        for mine, theirs in _BLOCK_NAMES.items():
            for kind in ("weight", "bias"):
                ours[f"blocks.{i}.{mine}.{kind}"] = _take(renamed, f"{prefix}{theirs}.{kind}")
        for kind in ("weight", "bias"):
            parts = [f"{prefix}attention.attention.{p}.{kind}" for p in ("query", "key", "value")]
            if all(p in renamed for p in parts):
                ours[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([renamed.pop(p) for p in parts])
    return ours


def _take(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"DeiT checkpoint lacks {key!r}: not a DeiT-with-teacher layout")
    return state.pop(key)


def hf_config_dict(config: ViTConfig) -> dict[str, Any]:
    data = config.to_hf_dict()
    data["model_type"] = "deit"
    data["architectures"] = ["DeiTForImageClassificationWithTeacher"]
    for vit_only in ("add_pooling_layer", "classifier_uses_pooler"):
        data.pop(vit_only, None)
    return data


def is_student_dir(directory: str | Path) -> bool:
    """True when ``directory`` holds a DeiT-with-teacher checkpoint (ours or transformers')."""
    config_path = Path(directory) / "config.json"
    if not config_path.is_file():
        return False
    data = json.loads(config_path.read_text())
    return data.get("model_type") == "deit" and "DeiTForImageClassificationWithTeacher" in (
        data.get("architectures") or []
    )


def save_student(
    model: DistilledViT, directory: str | Path, processor_config: dict[str, Any] | None = None
) -> Path:
    """Write an HF DeiT-with-teacher directory atomically (temp dir, then rename)."""
    from safetensors.torch import save_file

    from vitkit.atomic_files import write_directory_atomically

    def write(staging: Path) -> None:
        staging.mkdir()
        (staging / "config.json").write_text(
            json.dumps(hf_config_dict(model.config), indent=2) + "\n"
        )
        save_file(
            to_hf_state_dict(model), str(staging / "model.safetensors"), metadata={"format": "pt"}
        )
        if processor_config is not None:
            (staging / "preprocessor_config.json").write_text(
                json.dumps(processor_config, indent=2) + "\n"
            )

    return write_directory_atomically(directory, write)


def load_student(directory: str | Path) -> tuple[DistilledViT, dict[str, Any] | None]:
    """(student in eval mode, preprocessor_config or None) from a DeiT-with-teacher directory."""
    from safetensors.torch import load_file

    path = Path(directory)
    if not is_student_dir(path):
        raise CheckpointError(
            f"{path}: no config.json for DeiTForImageClassificationWithTeacher; a distilled "
            "student is saved by `vitkit distill` (or transformers) in that layout"
        )
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{path}: model.safetensors is missing")
    data = json.loads((path / "config.json").read_text())
    config = ViTConfig.from_hf_dict({**data, "architectures": ["ViTForImageClassification"]})
    config = config.replace(add_pooling_layer=False, classifier_uses_pooler=False)
    model = DistilledViT(config)
    state = from_hf_state_dict(load_file(str(weights)), config.num_hidden_layers)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{weights}: weights do not fit the config (missing {missing[:4]}, "
            f"unexpected {unexpected[:4]})"
        )
    processor_path = path / "preprocessor_config.json"
    processor = json.loads(processor_path.read_text()) if processor_path.is_file() else None
    return model.eval(), processor
