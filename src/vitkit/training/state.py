"""The state of a run between epochs, and ``last.pt``, which carries it across a crash.

``last.pt`` holds tensors and plain containers only (dicts, lists, tuples, numbers, strings):
the weights, the optimiser and schedule, the sampler, every random generator's state (numpy's as
a tensor), the metrics history and the settings. It is written atomically after every epoch and
read back with ``torch.load(weights_only=True)``, which refuses any pickle that would build
another object or run code, so resuming a run folder from someone else cannot execute anything.
A refused file is a ``TrainingError`` that says why, never a traceback.
"""

from __future__ import annotations

import math
import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitkit.atomic_files import atomic_torch_save
from vitkit.errors import TrainingError

STATE_FORMAT = "vitkit-training-state"
STATE_VERSION = 2  # 1: vitkit 0.1, pickled numpy RNG state (needs weights_only=False)


@dataclass
class FitState:
    """Where the fit loop stands: what ``--resume`` restores besides weights and optimiser."""

    epoch: int = 0  # epochs finished
    step: int = 0  # optimiser steps taken
    history: list[dict[str, Any]] = field(default_factory=list)  # metrics records
    best_val_loss: float = math.inf
    best_epoch: int | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python's, numpy's and torch's (CPU, CUDA) generator states, as plain data and tensors."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),  # (version, tuple of ints, gauss or None)
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    sampler: Any,
    fit: FitState,
    config: dict[str, Any],
) -> None:
    """Write ``last.pt`` atomically (see the module docstring for what it may hold)."""
    atomic_torch_save(
        {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "sampler": sampler.state_dict(),
            "rng": rng_state(),
            "epoch": fit.epoch,
            "step": fit.step,
            "history": fit.history,
            "best_val_loss": fit.best_val_loss,
            "best_epoch": fit.best_epoch,
            "config": config,
        },
        path,
    )


def load_state(path: Path) -> dict[str, Any]:
    """``last.pt`` read with ``weights_only=True``; TrainingError if it is anything else."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TrainingError(
            f"{path}: refused to resume from it: it is not a training state that loads as "
            f"tensors and plain data ({reason[:200]}). A last.pt written by someone else or by an "
            "older vitkit could run code when unpickled; start a new run (another --out)"
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise TrainingError(
            f"{path}: not a vitkit training state (no format {STATE_FORMAT!r}): "
            "start a new run (another --out)"
        )
    return state


def restore_fit_state(state: dict[str, Any]) -> FitState:
    return FitState(
        epoch=int(state["epoch"]),
        step=int(state["step"]),
        history=list(state["history"]),
        best_val_loss=float(state["best_val_loss"]),
        best_epoch=state["best_epoch"],
    )
