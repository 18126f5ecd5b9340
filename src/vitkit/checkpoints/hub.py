"""Hugging Face Hub ids ("google/vit-base-patch16-224"): download into huggingface_hub's cache.

Only the files a ViT needs are fetched (config, preprocessor config, weights; safetensors when the
repo has them, else pytorch_model.bin). A snapshot already in the cache is used without a network
round trip when offline (``HF_HUB_OFFLINE=1``) or when the Hub cannot be reached; otherwise the
error says how to hand vitkit a local directory instead.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from vitkit.errors import CheckpointError

# owner/name, optionally @revision (a branch, tag or commit): the Hub's own id grammar, loosely.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?$")
_SAFETENSORS = [
    "config.json",
    "preprocessor_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*-of-*.safetensors",
]
_PICKLES = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin"]


def is_hub_id(text: str) -> bool:
    """Shaped like a Hub id ("owner/name[@revision]"); see ``source_kind`` for the whole rule."""
    return bool(_HUB_ID.match(text)) and not text.endswith((".npz", ".safetensors", ".pth", ".bin"))


def source_kind(source: str | Path) -> Literal["path", "hub"] | None:
    """What a model source names: a local file or directory ("path": an existing path always
    wins), a Hugging Face Hub id ("hub": downloaded on load), or neither (None). The one rule
    every command uses to tell them apart."""
    if Path(source).expanduser().exists():
        return "path"
    return "hub" if is_hub_id(str(source)) else None


def _is_offline() -> bool:
    # Read at call time (huggingface_hub reads it once, at import).
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def download(hub_id: str) -> Path:
    """The local snapshot directory of ``hub_id`` ("owner/name" or "owner/name@revision")."""
    repo_id, _, revision = hub_id.partition("@")
    directory = _snapshot(hub_id, repo_id, revision or None, _SAFETENSORS)
    if not _has_weights(directory):
        directory = _snapshot(hub_id, repo_id, revision or None, _SAFETENSORS + _PICKLES)
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{hub_id}: the Hub repository has no config.json ({directory})")
    return directory


def _has_weights(directory: Path) -> bool:
    return any(directory.glob("*.safetensors")) or any(directory.glob("pytorch_model*.bin"))


def _snapshot(hub_id: str, repo_id: str, revision: str | None, patterns: list[str]) -> Path:
    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=patterns,
                cache_dir=os.environ.get("HF_HUB_CACHE") or None,
                local_files_only=_is_offline(),
            )
        )
    except LocalEntryNotFoundError as error:
        raise CheckpointError(_offline_message(hub_id, error)) from error
    except GatedRepoError as error:
        raise CheckpointError(
            f"{hub_id}: the Hub repository is gated: accept its terms on huggingface.co and log "
            "in (`hf auth login` or HF_TOKEN), or download it elsewhere and pass the directory"
        ) from error
    except RepositoryNotFoundError as error:
        raise CheckpointError(
            f"{hub_id}: no such Hub repository (or it is private: log in with `hf auth login` or "
            "set HF_TOKEN), and no local file or directory of that name exists"
        ) from error
    except RevisionNotFoundError as error:
        raise CheckpointError(
            f"{hub_id}: the Hub repository has no revision {revision!r}"
        ) from error
    except (OSError, ValueError) as error:
        raise CheckpointError(
            f"{hub_id}: download from the Hugging Face Hub failed: {error}"
        ) from error


def _offline_message(hub_id: str, error: Exception) -> str:
    why = "HF_HUB_OFFLINE is set" if _is_offline() else "the Hugging Face Hub could not be reached"
    repo_id = hub_id.partition("@")[0]
    return (
        f"{hub_id}: no such local path, and this Hub id is not in the local Hugging Face cache "
        f"while {why} ({type(error).__name__}). Either download it where there is a network "
        f"(`hf download {repo_id} --local-dir DIR`, or git clone "
        f"https://huggingface.co/{repo_id}) and pass DIR (a directory with config.json and "
        "model.safetensors or pytorch_model.bin) instead of the hub id, or point HF_HUB_CACHE "
        "at a cache that holds it."
    )
