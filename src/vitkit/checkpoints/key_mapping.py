"""Foreign weights into vitkit's names, checked: a ``KeyReader`` moves a format's tensors to
vitkit names and remembers what it could not find; ``build_vit`` / ``load_checked`` check names
and shapes and raise one ``CheckpointError`` that lists every problem at once (so a user fixes
them in one go). Format modules (hf, timm, npz, ...) only know their own naming."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar, cast

import torch
from torch import nn

from vitkit.checkpoints.weight_files import StateDict
from vitkit.errors import CheckpointError
from vitkit.models.config import ImageSize, ViTConfig, to_pair
from vitkit.models.posembed import resample_pos_embed
from vitkit.models.vit import ViT

_ConfigType = TypeVar("_ConfigType", bound=ViTConfig)
_MAX_LISTED = 20


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


def build_vit(
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
