"""What every checkpoint format shares: reading weight files safely, renaming foreign keys while
keeping track of what was missing or left over, and building the ViT with a readable mismatch report.

Format modules (hf, timm, npz) only know their own naming: they feed a foreign state dict through a
``KeyReader`` and hand the result to ``build_model``, which checks names and shapes and raises one
``CheckpointError`` that lists every problem at once (so a user fixes them in one go).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
from safetensors.torch import save_file
from torch import nn

from vitkit.atomic_files import write_directory_atomically
from vitkit.errors import CheckpointError
from vitkit.models.config import ImageSize, ViTConfig, resolve_aliases, to_pair
from vitkit.models.posembed import resample_pos_embed
from vitkit.models.vit import ViT

StateDict = dict[str, torch.Tensor]
_ConfigType = TypeVar("_ConfigType", bound=ViTConfig)

_Config = TypeVar("_Config")  # a model type's config: a dataclass

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
WEIGHT_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES

# Training checkpoints wrap the weights: timm's train script writes {"state_dict": ...},
# DeiT/MAE-style scripts {"model": ...}. The first of these keys that holds a dict wins.
_WRAPPER_KEYS = ("state_dict", "model", "module", "state_dict_ema", "model_ema")
_MAX_LISTED = 20


def read_state_dict(path: Path) -> StateDict:
    """Tensors of a .safetensors or pickled (.pth/.pt/.bin) file, unwrapped, as float32 on CPU.

    Pickles are read with ``torch.load(weights_only=True)``: a file that needs arbitrary Python
    objects to load is refused rather than executed.
    """
    is_safetensors = path.suffix in SAFETENSORS_SUFFIXES
    tensors = _read_safetensors(path) if is_safetensors else _read_pickle(path)
    return {name: _as_float32(tensor) for name, tensor in _strip_module_prefix(tensors).items()}


def _read_safetensors(path: Path) -> StateDict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

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


@dataclass
class KeyReader:
    """Moves tensors from a foreign state dict into vitkit names, remembering what it could not find.

    ``origins`` maps each vitkit name to the foreign name(s) it came from, for error messages.
    """

    foreign: StateDict
    tensors: StateDict = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.foreign = dict(self.foreign)

    def has(self, name: str) -> bool:
        return name in self.foreign

    def take(self, name: str) -> torch.Tensor | None:
        """Remove and return ``name``; record it as missing if absent."""
        if name not in self.foreign:
            self.missing.append(name)
            return None
        return self.foreign.pop(name)

    def move(
        self,
        name: str,
        ours: str,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        tensor = self.take(name)
        if tensor is not None:
            self.put(ours, transform(tensor) if transform else tensor, name)

    def put(self, ours: str, tensor: torch.Tensor, origin: str) -> None:
        self.tensors[ours] = tensor
        self.origins[ours] = origin

    def unexpected(self) -> list[str]:
        return sorted(self.foreign)


def build_model(
    config: ViTConfig,
    reader: KeyReader,
    source: Path | str,
    image_size: ImageSize | None = None,
    device: str | torch.device = "cpu",
    model_class: type[ViT] = ViT,
    *,
    antialias: bool = True,
) -> ViT:
    """A ViT (or ``model_class``, a ViT subclass such as the DeiT student) for ``config``
    holding the reader's tensors, position embeddings resampled to ``image_size`` if given
    (``antialias``: timm's load-time rule; a format whose library resamples at call time passes
    its own rule). Raises one CheckpointError listing every mismatch."""
    tensors = reader.tensors
    if image_size is not None and not _name_problems(reader) and "pos_embed" in tensors:
        config, tensors = _resample_to(config, tensors, to_pair(image_size), source, antialias)
    with torch.device("meta"):
        # Built on the meta device: no time spent initialising weights we overwrite next.
        model = model_class(config)
    what = f"the {config.model_type} model its config describes ({vit_shape(config)})"
    load_checked(model, reader, source, what, tensors)
    return model.to(device).eval()


def load_checked(
    model: nn.Module,
    reader: KeyReader,
    source: Path | str,
    what: str,
    tensors: StateDict | None = None,
    optional: tuple[str, ...] = (),
) -> None:
    """Put the reader's tensors (or ``tensors``, vitkit names) into ``model``, checking names and
    shapes first: one CheckpointError lists every missing, unexpected and wrong-shape key.

    ``what`` names the model in that message; buffers whose names end with one of ``optional``
    (BatchNorm's ``num_batches_tracked``) may be absent. A model built on the meta device gets
    the tensors themselves (no copy).
    """
    tensors = reader.tensors if tensors is None else tensors
    expected = {
        name: tuple(t.shape)
        for name, t in model.state_dict().items()
        if name in tensors or not name.endswith(optional or ("\0",))
    }
    # Foreign names the mapping wanted but did not find are listed as such, not again under
    # the vitkit names they would have filled.
    problems = _name_problems(reader) + _shape_problems(
        expected, tensors, reader.origins, list_missing=not reader.missing
    )
    if problems:
        raise CheckpointError(_describe(source, what, problems))
    on_meta = any(t.is_meta for t in model.state_dict().values())
    contiguous = {k: v.contiguous() for k, v in tensors.items()}
    model.load_state_dict(contiguous, strict=not optional, assign=on_meta)
    left_on_meta = [
        name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta
    ]
    if left_on_meta:  # a tensor the state dict does not carry (a non-persistent buffer, say)
        raise RuntimeError(f"vitkit bug: not materialised after loading {source}: {left_on_meta}")


def _resample_to(
    config: _ConfigType,
    tensors: StateDict,
    image_hw: tuple[int, int],
    source: Path | str,
    antialias: bool,
) -> tuple[_ConfigType, StateDict]:
    if any(side % config.patch_size for side in image_hw):
        raise CheckpointError(
            f"{source}: image size {image_hw[0]}x{image_hw[1]} is not a multiple of the "
            f"checkpoint's patch size {config.patch_size}"
        )
    new_config = cast(
        _ConfigType,
        config.replace(image_size=image_hw if image_hw[0] != image_hw[1] else image_hw[0]),
    )
    pos_embed = tensors["pos_embed"]
    prefix = config.num_pos_embed_prefix  # [CLS] (+ registers, + DeiT's distillation token)
    if pos_embed.shape[1] != config.num_patches + prefix:
        return config, tensors  # reported as a shape mismatch against the checkpoint's own grid
    tensors = dict(tensors)
    tensors["pos_embed"] = resample_pos_embed(
        pos_embed, new_config.grid_size, config.grid_size, prefix, antialias=antialias
    )
    return new_config, tensors


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


def _name_problems(reader: KeyReader) -> list[str]:
    problems = []
    if reader.missing:
        problems.append(_listing("missing keys", reader.missing))
    if reader.unexpected():
        problems.append(_listing("unexpected keys", reader.unexpected()))
    return problems


def _shape_problems(
    expected: dict[str, tuple[int, ...]],
    tensors: StateDict,
    origins: dict[str, str],
    list_missing: bool = True,
) -> list[str]:
    problems = []
    missing = [name for name in expected if name not in tensors] if list_missing else []
    extra = [origins.get(name, name) for name in tensors if name not in expected]
    if missing:
        problems.append(_listing("missing keys (vitkit names)", missing))
    if extra:
        problems.append(_listing("unexpected keys", extra))
    wrong = [
        f"{origins.get(name, name)}: checkpoint {tuple(tensor.shape)}, model {expected[name]}"
        for name, tensor in tensors.items()
        if name in expected and tuple(tensor.shape) != expected[name]
    ]
    if wrong:
        problems.append(_listing("wrong shapes", wrong))
    return problems


def _listing(title: str, items: list[str]) -> str:
    shown = items[:_MAX_LISTED]
    more = f"\n    ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
    return f"  {title} ({len(items)}):\n" + "\n".join(f"    {item}" for item in shown) + more


def vit_shape(config: ViTConfig) -> str:
    """The architecture in one line, for error messages."""
    return (
        f"hidden_size={config.hidden_size}, layers={config.num_hidden_layers}, "
        f"heads={config.num_attention_heads}, patch={config.patch_size}, "
        f"image={config.image_size}, num_labels={config.num_labels}"
    )


def _describe(source: Path | str, what: str, problems: list[str]) -> str:
    return (
        f"{source}: weights do not fit {what}:\n"
        + "\n".join(problems)
        + "\nCheck that the config and the weights come from the same model (and that the file "
        "is a checkpoint of this architecture)."
    )


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
