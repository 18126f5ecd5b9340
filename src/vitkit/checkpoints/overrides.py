"""``--model-arg KEY=VALUE``: settings a checkpoint does not record, set on the config its file
gives, the same way for every model type and format (``apply_overrides``); and a ViTConfig read
from a config.json dict with errors naming the file."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

from vitkit.errors import CheckpointError
from vitkit.models.config import ViTConfig, resolve_aliases

_Config = TypeVar("_Config")  # a model type's config: a dataclass


def apply_overrides(
    config: _Config, overrides: Mapping[str, Any] | None, source: Path | str
) -> _Config:
    """``config`` (any model type's config dataclass) with the user's ``--model-arg KEY=VALUE``
    settings: the one way every format applies them. Errors name the key and the file."""
    if not overrides:
        return config
    check_setting_names(overrides, source, type(config))
    try:  # timm's names of ViT settings (init_values, ...) are accepted for every type
        return cast(_Config, dataclasses.replace(config, **resolve_aliases(dict(overrides))))  # type: ignore[type-var]
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: {error} (from the --model-arg overrides)") from error


def check_setting_names(
    overrides: Mapping[str, Any], source: Path | str, config_class: type = ViTConfig
) -> None:
    """Refuse ``--model-arg`` keys that are not fields of ``config_class`` (a ViT's: nor timm's
    aliases of them)."""
    known = {field.name for field in dataclasses.fields(config_class)}
    unknown = sorted(key for key in resolve_aliases(dict(overrides)) if key not in known)
    if unknown:
        examples = (
            "such as num_attention_heads, global_pool, hidden_act, layerscale_value"
            if issubclass(config_class, ViTConfig)
            else f"({', '.join(sorted(known))})"
        )
        raise CheckpointError(
            f"{source}: unknown model setting(s) {', '.join(unknown)}: --model-arg takes "
            f"{config_class.__name__} fields {examples}"
        )


def read_config(data: Any, source: Path | str) -> ViTConfig:
    """A ViTConfig from a config.json dict; errors name the file."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{source}: the model config is a {type(data).__name__}, not a dict")
    try:
        return ViTConfig.from_hf_dict(data)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: not a valid ViT config ({error})") from error
