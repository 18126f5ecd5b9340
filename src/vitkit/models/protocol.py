"""What every model vitkit runs offers, whatever its architecture (ViT, DeiT student, ResNet, ...).

The Classifier, the runtime, the trainer, the server and the CLI are written against this small
protocol, never against one architecture, so a model type registered in
``vitkit.checkpoints.registry`` works in every command at once:

- ``model.config``: ``model_type`` ("vit", "deit", "resnet", ...), ``id2label``, ``num_labels``,
  ``labels()``, ``image_hw`` (the resolution it was built for) and ``to_hf_dict()``
  (its config.json);
- ``model.forward_logits(pixels)``: (B, classes) logits, the fastest way the model has;
- ``model.forward_embedding(pixels, pool)``: one vector per image (or the tokens) for each pool
  in ``model.capabilities.pools``; ``capabilities.default_pool`` when the caller has no opinion;
- ``model.reset_head(id2label)``, ``model.num_parameters()``, ``model.flops_per_image(hw)``;
- ``model.capabilities``: what else it can do (attention maps, int8, ONNX export, the
  [CLS]-only fast path), so a command it cannot serve says so in one line
  (``require(model, "attention_maps", ...)``) instead of failing deep inside.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from vitkit.errors import UnsupportedOperationError

# cls+mean: [CLS] concatenated with the mean patch token (Virchow's embedding).
Pool = Literal["cls", "mean", "cls+mean", "pooler", "tokens"]
POOLS: tuple[str, ...] = ("cls", "mean", "cls+mean", "pooler", "tokens")


@dataclass(frozen=True)
class Capabilities:
    """What a model can do beyond logits and embeddings."""

    pools: tuple[str, ...]  # what forward_embedding accepts
    default_pool: str
    attention_maps: bool = False  # forward(pixels, output_attentions=True).attentions
    int8: bool = False  # runtime's dynamic int8 quantization makes it faster
    onnx_export: bool = False  # vitkit.checkpoints.onnx.export_onnx writes it
    cls_fast_path: bool = False  # forward_logits skips work that forward() does
    dense: bool = False  # forward_logits gives per-pixel (B, classes, h, w) logits (segmentation)

    def with_pools(self, pools: tuple[str, ...]) -> Capabilities:
        default = self.default_pool if self.default_pool in pools else pools[0]
        return dataclasses.replace(self, pools=pools, default_pool=default)


@runtime_checkable
class ModelConfig(Protocol):
    """The config every registered model carries (a dataclass written as config.json)."""

    id2label: dict[int, str]

    @property
    def model_type(self) -> str: ...

    @property
    def num_labels(self) -> int: ...

    @property
    def image_hw(self) -> tuple[int, int]: ...

    def labels(self) -> list[str]: ...

    def to_hf_dict(self) -> dict[str, Any]: ...


@runtime_checkable
class VisionModel(Protocol):
    """A registered model (an ``nn.Module``): see the module docstring."""

    @property
    def config(self) -> Any: ...

    @property
    def capabilities(self) -> Capabilities: ...

    def forward_logits(self, pixel_values: torch.Tensor) -> torch.Tensor: ...

    def forward_embedding(self, pixel_values: torch.Tensor, pool: str) -> torch.Tensor: ...

    def reset_head(self, id2label: dict[int, str]) -> None: ...

    def num_parameters(self) -> int: ...

    def flops_per_image(self, image_hw: tuple[int, int] | None = None) -> int: ...

    # and what every nn.Module has, that the callers use
    def eval(self) -> Any: ...

    def to(self, *args: Any, **kwargs: Any) -> Any: ...


def logits_of(output: Any) -> torch.Tensor:
    """Logits from a forward's output: a tensor, or an object with ``.logits`` (ours, HF's)."""
    return output.logits if hasattr(output, "logits") else output


def model_type_of(model: Any) -> str:
    """What to call ``model`` in a message: its ``display_type`` ("onnx"), its config's
    ``model_type``, or the class name for a module outside the protocol."""
    config = getattr(model, "config", None)
    fallback = str(getattr(config, "model_type", type(model).__name__))
    return str(getattr(model, "display_type", fallback))


def require(model: Any, capability: str, doing: str) -> None:
    """Raise UnsupportedOperationError naming the model type unless it has ``capability``."""
    capabilities = getattr(model, "capabilities", None)
    if capabilities is None or not getattr(capabilities, capability):
        kind = model_type_of(model)
        raise UnsupportedOperationError(
            f"{kind} models cannot {doing}" + _WHY.get((kind, capability), "")
        )


def check_pool(model: Any, pool: str) -> None:
    """Raise UnsupportedOperationError unless ``model`` can pool its features as ``pool``."""
    pools = model.capabilities.pools
    if pool not in pools:
        raise UnsupportedOperationError(
            f"this {model_type_of(model)} model has no {pool!r} embedding: use one of "
            f"{', '.join(pools)} (default {model.capabilities.default_pool})"
        )


# Why a model type lacks a capability, where a user would otherwise wonder.
_WHY: dict[tuple[str, str], str] = {
    ("resnet", "attention_maps"): (
        ": a ResNet is a CNN, it has no attention to draw (explain a vit or deit model)"
    ),
    ("resnet", "int8"): (
        ": vitkit's int8 quantizes Linear layers and a ResNet is convolutions (use fp32)"
    ),
    ("resnet", "onnx_export"): ": vitkit exports transformers (vit, deit) to ONNX",
    ("onnx", "attention_maps"): ": an ONNX graph exposes no attention weights (use the checkpoint)",
}
