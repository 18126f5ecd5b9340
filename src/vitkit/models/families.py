"""The published ViT families people embed with, recognised by their architecture.

A timm state dict carries no name, only shapes; the shapes of the pathology foundation models are
distinctive enough to name them (UNI is the one ViT-L/16 with LayerScale, Virchow the ViT-H/14
with SwiGLU, ...). The family decides the embedding its authors document, through
``global_pool`` (see ``vitkit.models.config``): Virchow's is [CLS] concatenated with the mean
patch token ("avg+token"), the others' the normalised [CLS] ("token"). DINOv2 is recognised by
its file format (``vitkit.checkpoints.dinov2``), or by a timm architecture name.

Two families can share an architecture (H-optimus-0 is timm's ``vit_giant_patch14_reg4_dinov2``
shape): then the name lists both, and the embedding, which they share, is unaffected.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vitkit.models.config import ViTConfig

DINOV2 = "DINOv2"
DINOV2_REGISTERS = "DINOv2 with registers"


@dataclass(frozen=True)
class Family:
    name: str
    published: str  # where the weights are published, and in which format
    global_pool: str  # the documented embedding, as a global_pool value
    matches: Callable[[ViTConfig], bool]


def _shape(
    patch: int,
    width: int,
    depth: int,
    *,
    swiglu: bool,
    registers: int,
    layerscale: bool = True,
) -> Callable[[ViTConfig], bool]:
    def matches(config: ViTConfig) -> bool:
        return (
            config.patch_size == patch
            and config.hidden_size == width
            and config.num_hidden_layers == depth
            and config.use_swiglu_ffn == swiglu
            and config.num_register_tokens == registers
            and (config.layerscale_value is not None) == layerscale
        )

    return matches


FAMILIES = (
    Family(
        "UNI",
        "MahmoodLab/UNI (timm, ViT-L/16)",
        "token",
        _shape(16, 1024, 24, swiglu=False, registers=0),
    ),
    Family(
        "UNI2-h",
        "MahmoodLab/UNI2-h (timm, ViT-H/14, 8 registers, SwiGLU)",
        "token",
        _shape(14, 1536, 24, swiglu=True, registers=8),
    ),
    Family(
        "Virchow",
        "paige-ai/Virchow (timm, ViT-H/14, SwiGLU)",
        "avg+token",
        _shape(14, 1280, 32, swiglu=True, registers=0),
    ),
    Family(
        "Virchow2",
        "paige-ai/Virchow2 (timm, ViT-H/14, 4 registers, SwiGLU)",
        "avg+token",
        _shape(14, 1280, 32, swiglu=True, registers=4),
    ),
    Family(
        "Prov-GigaPath",
        "prov-gigapath/prov-gigapath (timm, ViT-g/16 tile encoder, SwiGLU)",
        "token",
        _shape(16, 1536, 40, swiglu=True, registers=0),
    ),
    Family(
        "H-optimus-0 / DINOv2-g reg4",
        "bioptimus/H-optimus-0 (timm, ViT-g/14, 4 registers, SwiGLU)",
        "token",
        _shape(14, 1536, 40, swiglu=True, registers=4),
    ),
)

# For the README and `vitkit info`: families recognised by their format, not their shapes.
FORMAT_FAMILIES = {
    DINOV2: "facebook/dinov2-{small,base,large,giant}, owkin/phikon-v2 (transformers Dinov2Model)",
    DINOV2_REGISTERS: "facebook/dinov2-with-registers-* (transformers Dinov2WithRegistersModel)",
}


def identify(config: ViTConfig) -> Family | None:
    """The published family whose architecture ``config`` has, if any."""
    return next((family for family in FAMILIES if family.matches(config)), None)


def with_family(config: ViTConfig, architecture: str = "") -> ViTConfig:
    """``config`` labelled with its family; a headless model also gets the family's embedding
    (a head fixes ``global_pool`` to what it was trained on). ``architecture``: a timm name."""
    if config.family:
        return config
    if "dinov2" in architecture:
        name = DINOV2_REGISTERS if config.num_register_tokens else DINOV2
        family = identify(config)
        if family is not None and family.name.startswith("H-optimus"):
            name = family.name
        return config.replace(family=name)
    family = identify(config)
    if family is None:
        return config
    if config.num_labels:
        return config.replace(family=family.name)
    return config.replace(family=family.name, global_pool=family.global_pool)


def pooler_is_cls(config: ViTConfig) -> bool:
    """DINOv2's pooler_output (transformers' Dinov2Model) is the normalised [CLS] token."""
    return config.family.startswith(DINOV2)
