"""A slide-level (MIL) model directory: everything needed to predict a new slide from its file.

    config.json        {"model_type": "vitkit_mil", "mil": <MILConfig>, "labels": [...],
                        "problem_type", "encoder": {...}, "tiling": {...}}
    model.safetensors  the network's weights

``encoder`` names the tile encoder that made the training embeddings (its source as
``vitkit.load`` reads it, input size, pooling, precision) and ``tiling`` keeps the tile settings
of ``vitkit slide`` (level or mpp, tile size, stride, minimum tissue), so ``vitkit mil predict
slide.svs`` embeds a new slide exactly as the training slides were before running the network.
Both are empty for a model trained on embeddings made elsewhere; it then predicts from
embeddings only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vitkit.atomic_files import atomic_write_text
from vitkit.errors import CheckpointError
from vitkit.models.mil import MILConfig, MILNetwork, build_mil

MODEL_TYPE = "vitkit_mil"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"


@dataclass
class MILModel:
    """A loaded MIL directory."""

    network: MILNetwork
    labels: list[str]
    encoder: dict[str, Any] = field(default_factory=dict)
    tiling: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None

    @property
    def config(self) -> MILConfig:
        return self.network.config

    @property
    def multi_label(self) -> bool:
        return self.config.problem_type == "multi_label_classification"


def save_mil(model: MILModel, directory: Path) -> Path:
    """Write ``model`` into ``directory`` (weights first, config.json last)."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.network.state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS))
    config = {
        "model_type": MODEL_TYPE,
        "mil": model.config.to_dict(),
        "labels": list(model.labels),
        "problem_type": model.config.problem_type,
        "encoder": model.encoder,
        "tiling": model.tiling,
    }
    atomic_write_text(directory / CONFIG, json.dumps(config, indent=2) + "\n")
    return directory


def is_mil_directory(path: Path) -> bool:
    try:
        return json.loads((path / CONFIG).read_text()).get("model_type") == MODEL_TYPE
    except (OSError, ValueError, AttributeError):
        return False


def load_mil(directory: str | Path, device: str | torch.device = "cpu") -> MILModel:
    """A MIL directory written by ``save_mil`` (``vitkit mil train``'s ``best/``)."""
    directory = Path(directory)
    if not is_mil_directory(directory):
        raise CheckpointError(
            f"{directory}: not a slide-level model (no {CONFIG} with model_type {MODEL_TYPE!r}); "
            "give the best/ folder of `vitkit mil train`"
        )
    config = json.loads((directory / CONFIG).read_text())
    try:
        network = build_mil(MILConfig.from_dict(config["mil"]))
        network.load_state_dict(load_file(str(directory / WEIGHTS)))
    except (OSError, RuntimeError, ValueError, TypeError) as error:
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise CheckpointError(f"{directory}: its weights do not load ({reason})") from None
    network.to(device).eval()
    return MILModel(
        network,
        list(config["labels"]),
        dict(config.get("encoder") or {}),
        dict(config.get("tiling") or {}),
        directory,
    )
