"""Checkpoint directories: their JSON files read with errors naming the file, written whole
(config.json, model.safetensors, preprocessor_config.json) beside the target and renamed into
place, and never over a directory that is not a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from vitkit.atomic_files import write_directory_atomically
from vitkit.checkpoints.weight_files import StateDict
from vitkit.errors import CheckpointError


def read_json(path: Path) -> Any:
    """A checkpoint's JSON file (config.json, an index); errors name the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not a readable JSON file ({error})") from error


def save_directory(
    target: Path,
    config: dict[str, Any],
    tensors: StateDict,
    processor_config: dict[str, Any],
) -> Path:
    """Write config.json, model.safetensors and preprocessor_config.json as one directory.

    Written beside the target under a temporary name and renamed into place, so a crash never
    leaves half a checkpoint; an existing checkpoint directory at ``target`` is replaced only once
    the new one is complete; a non-empty directory that is not a checkpoint is never replaced.
    """
    check_replaceable(target)

    def write(staging: Path) -> None:
        staging.mkdir()
        (staging / "config.json").write_text(
            json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        (staging / "preprocessor_config.json").write_text(
            json.dumps(processor_config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )

    write_directory_atomically(target, write)
    return target


def check_replaceable(target: Path) -> None:
    # Never delete a directory that is not a checkpoint: `vitkit convert x.npz ~` must not wipe $HOME.
    if target.is_file():
        raise CheckpointError(f"{target}: exists and is a file; give a directory path to save to")
    if target.is_dir() and any(target.iterdir()) and not (target / "config.json").is_file():
        raise CheckpointError(
            f"{target}: exists, is not empty and holds no config.json, so it is not a checkpoint "
            "directory; refusing to replace it. Choose a new or empty directory."
        )
