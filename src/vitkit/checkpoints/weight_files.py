"""Weight files read safely: safetensors, or pickles unpickled with ``weights_only=True`` only,
unwrapped from training checkpoints (``{"state_dict": ...}``, DDP's ``module.`` prefix), as
float32 tensors on the CPU."""

from __future__ import annotations

import argparse
import contextlib
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from vitkit.errors import CheckpointError

StateDict = dict[str, torch.Tensor]
SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
WEIGHT_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES

# Training checkpoints wrap the weights: timm's train script writes {"state_dict": ...},
# DeiT/MAE-style scripts {"model": ...}. The first of these keys that holds a dict wins.
_WRAPPER_KEYS = ("state_dict", "model", "module", "state_dict_ema", "model_ema")


def read_state_dict(path: Path) -> StateDict:
    """Tensors of a .safetensors or pickled (.pth/.pt/.bin) file, unwrapped, as float32 on CPU.

    Pickles are read with ``torch.load(weights_only=True)``: a file that needs arbitrary Python
    objects to load is refused rather than executed.
    """
    is_safetensors = path.suffix in SAFETENSORS_SUFFIXES
    tensors = _read_safetensors(path) if is_safetensors else _read_pickle(path)
    return {name: _as_float32(tensor) for name, tensor in _strip_module_prefix(tensors).items()}


def _read_safetensors(path: Path) -> StateDict:
    try:
        # load_file memory-maps the file: copy, so that overwriting the file later (another
        # save into the same directory) cannot crash this process with SIGBUS.
        return {name: tensor.clone() for name, tensor in load_file(str(path), device="cpu").items()}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from error


def _read_pickle(path: Path) -> StateDict:
    if not _looks_like_torch_file(path):
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle: is it a "
            "text file, an image, or a download error page?)"
        )
    try:
        with _training_script_globals():
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        lines = str(error).splitlines()
        reason = next((line for line in lines if "Unsupported" in line), lines[0] if lines else "")
        raise CheckpointError(
            f"{path}: refused to load: it is not a plain tensor checkpoint and vitkit only "
            f"unpickles with torch.load(weights_only=True) ({reason.strip()[:200]}). If you "
            "trust the file, re-save its tensors as a state dict, e.g. "
            "safetensors.torch.save_file(model.state_dict(), 'model.safetensors')"
        ) from error
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({str(error).splitlines()[0]})"
        ) from error
    return _unwrap(loaded, path)


def _training_script_globals() -> contextlib.AbstractContextManager[object]:
    """Let weights_only unpickling accept argparse.Namespace: timm's train script stores its
    command-line ``args`` in every checkpoint. A Namespace only holds attributes; it runs no code."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    return safe_globals([argparse.Namespace]) if safe_globals else contextlib.nullcontext()


def _looks_like_torch_file(path: Path) -> bool:
    # torch.save writes a zip archive (since 1.6) or, legacy, a pickle (protocol byte 0x80).
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot be read ({error})") from error
    return head.startswith((b"PK\x03\x04", b"\x80"))


def _unwrap(loaded: object, path: Path) -> StateDict:
    while isinstance(loaded, Mapping):
        inner = next((loaded[k] for k in _WRAPPER_KEYS if isinstance(loaded.get(k), Mapping)), None)
        if inner is None:
            break
        loaded = inner
    if not isinstance(loaded, Mapping):
        raise CheckpointError(
            f"{path}: holds a {type(loaded).__name__}, not a state dict of tensors"
        )
    tensors = {str(k): v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: contains no tensors, so it is not a model checkpoint")
    return tensors


def _strip_module_prefix(tensors: StateDict) -> StateDict:
    # DistributedDataParallel saves every key as "module.<name>".
    if tensors and all(name.startswith("module.") for name in tensors):
        return {name[len("module.") :]: tensor for name, tensor in tensors.items()}
    return tensors


def _as_float32(tensor: torch.Tensor) -> torch.Tensor:
    # fp16/bf16 files are common; the model is built in fp32 (callers cast later if they want).
    return tensor.float() if tensor.is_floating_point() else tensor
