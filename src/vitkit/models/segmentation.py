"""Per-pixel classification with a ViT encoder: ``Segmenter`` = ViT backbone + a decoder head.

Two heads:

- ``"dpt"``: the DPT decoder (``vitkit.models.dpt``) on the tokens of four blocks. On a plain
  ViT this is exactly transformers' ``DPTForSemanticSegmentation`` (``Intel/dpt-large-ade``),
  saved and read in its layout (``vitkit.checkpoints.hf_dpt``).
- ``"linear"``: DINOv2's linear protocol: the patch tokens of the last ``linear_layers`` blocks
  (each through the backbone's final LayerNorm), concatenated, BatchNorm, a 1x1 convolution to
  the classes; logits on the patch grid, upsampled bilinearly to the mask.

The backbone is any ViT vitkit loads (HF ViT, DINOv2, timm's pathology foundation models, an
MAE encoder); its prefix tokens ([CLS], registers) are dropped before the maps are formed.
Logits come at the head's own resolution (the input size for DPT at patch 16, the patch grid for
the linear head): ``upsample_logits`` brings them to any size, as transformers'
``post_process_semantic_segmentation`` does (bilinear, corners not aligned).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.models.config import ViTConfig
from vitkit.models.dpt import DPTDecoder, DPTHeadConfig
from vitkit.models.protocol import Capabilities
from vitkit.models.vit import ViT

HEADS = ("dpt", "linear")
IGNORE_INDEX = (
    255  # mask value that no loss or metric counts (transformers' semantic_loss_ignore_index)
)
DPT_MODEL_TYPE = "dpt"  # transformers' DPTForSemanticSegmentation layout
OWN_MODEL_TYPE = "vitkit_segmenter"  # vitkit's layout: safetensors + config (any backbone)


@dataclass
class SegmenterConfig:
    """A backbone's config, the head's settings and the classes."""

    backbone: ViTConfig
    head: str = "dpt"
    id2label: dict[int, str] = field(default_factory=dict)
    dpt: DPTHeadConfig | None = None  # the DPT head's settings (None: sized for the backbone)
    linear_layers: int = 1  # linear head: concatenate the patch tokens of the last N blocks
    ignore_index: int = IGNORE_INDEX
    backbone_type: str = "vit"  # the registry type the backbone was read as (vit, dinov2, ...)

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"segmentation head {self.head!r}: use one of {', '.join(HEADS)}")
        self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        if set(self.id2label) != set(range(len(self.id2label))):
            raise ValueError("id2label must name classes 0..N-1")
        if self.backbone.num_labels or self.backbone.add_pooling_layer:  # no head, no pooler
            self.backbone = self.backbone.replace(
                num_labels=0,
                id2label={},
                thresholds=None,
                add_pooling_layer=False,
                classifier_uses_pooler=False,
            )
        if self.head == "dpt" and self.dpt is None:
            backbone = self.backbone
            self.dpt = DPTHeadConfig.for_depth(
                backbone.num_hidden_layers, backbone.hidden_size, backbone.patch_size
            )
        if self.head == "dpt":
            assert self.dpt is not None
            self._check_dpt(self.dpt)
        if not 1 <= self.linear_layers <= self.backbone.num_hidden_layers:
            raise ValueError(
                f"linear_layers={self.linear_layers}: between 1 and the backbone's "
                f"{self.backbone.num_hidden_layers} blocks"
            )

    def _check_dpt(self, dpt: DPTHeadConfig) -> None:
        depth = self.backbone.num_hidden_layers
        if any(not 0 <= index < depth for index in dpt.backbone_out_indices):
            raise ValueError(
                f"backbone_out_indices {list(dpt.backbone_out_indices)} name blocks the "
                f"{depth}-block backbone does not have"
            )
        if list(dpt.backbone_out_indices) != sorted(set(dpt.backbone_out_indices)):
            raise ValueError(
                f"backbone_out_indices {list(dpt.backbone_out_indices)}: name distinct blocks in "
                "increasing order (transformers' DPT picks them as a set)"
            )
        if dpt.readout_type != "ignore" and not self.backbone.class_token:
            raise ValueError(
                f"readout_type {dpt.readout_type!r} reads [CLS] and this backbone has none: "
                "use readout_type='ignore'"
            )

    # ---- the protocol's config fields ---------------------------------------------------
    @property
    def model_type(self) -> str:
        """ "dpt" when transformers' DPTForSemanticSegmentation expresses the model exactly
        (a DPT head on a plain ViT with [CLS] and a square input), else vitkit's own type."""
        return DPT_MODEL_TYPE if self.in_dpt_layout else OWN_MODEL_TYPE

    @property
    def in_dpt_layout(self) -> bool:
        backbone = self.backbone
        height, width = backbone.image_hw
        return (
            self.head == "dpt"
            and not backbone.variant_features
            and backbone.hidden_act in ("gelu", "gelu_new", "relu")
            and height == width
        )

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def image_hw(self) -> tuple[int, int]:
        return self.backbone.image_hw

    @property
    def patch_size(self) -> int:
        return self.backbone.patch_size

    def labels(self) -> list[str]:
        return [self.id2label[i] for i in range(self.num_labels)]

    def replace(self, **changes: Any) -> SegmenterConfig:
        return dataclasses.replace(self, **changes)

    def to_hf_dict(self) -> dict[str, Any]:
        """vitkit's own config.json (``vitkit.checkpoints.hf_dpt`` writes transformers' for the
        DPT layout)."""
        labels = self.labels()
        return {
            "model_type": OWN_MODEL_TYPE,
            "head": self.head,
            "id2label": {str(i): label for i, label in enumerate(labels)},
            "label2id": {label: i for i, label in enumerate(labels)},
            "dpt": self.dpt.to_dict() if self.dpt is not None else None,
            "linear_layers": self.linear_layers,
            "semantic_loss_ignore_index": self.ignore_index,
            "backbone_type": self.backbone_type,
            "backbone": self.backbone.to_hf_dict(),
        }

    @classmethod
    def from_hf_dict(cls, data: dict[str, Any]) -> SegmenterConfig:
        dpt = data.get("dpt")
        return cls(
            backbone=ViTConfig.from_hf_dict(data["backbone"]),
            head=data.get("head", "dpt"),
            id2label=data.get("id2label") or {},
            dpt=DPTHeadConfig.from_dict(dpt) if dpt else None,
            linear_layers=int(data.get("linear_layers", 1)),
            ignore_index=int(data.get("semantic_loss_ignore_index", IGNORE_INDEX)),
            backbone_type=str(data.get("backbone_type", "vit")),
        )


@dataclass
class SegmentationOutput:
    logits: torch.Tensor  # (B, classes, h, w) at the head's resolution
    auxiliary_logits: torch.Tensor | None = None  # DPT's auxiliary head, in training mode only


class LinearHead(nn.Module):
    """DINOv2's linear segmentation head: BatchNorm + 1x1 conv on concatenated patch tokens."""

    def __init__(self, width: int, num_layers: int, num_labels: int) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.batch_norm = nn.BatchNorm2d(width * num_layers)
        self.classifier = nn.Conv2d(width * num_layers, num_labels, kernel_size=1)

    def forward(
        self, hidden_states: list[torch.Tensor], grid: tuple[int, int], num_prefix: int
    ) -> tuple[torch.Tensor, None]:
        maps = []
        for tokens in hidden_states:
            patches = tokens[:, num_prefix:]
            maps.append(patches.transpose(1, 2).reshape(patches.shape[0], -1, *grid))
        return self.classifier(self.batch_norm(torch.cat(maps, dim=1))), None

    def reset_classes(self, num_labels: int) -> None:
        old = self.classifier
        self.classifier = nn.Conv2d(old.in_channels, num_labels, 1).to(old.weight.device)


class Segmenter(nn.Module):
    """A ViT backbone and a segmentation head (see the module docstring)."""

    def __init__(self, config: SegmenterConfig, backbone: ViT | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone = _headless(backbone) if backbone is not None else ViT(config.backbone)
        self.decoder: DPTDecoder | LinearHead
        hidden = config.backbone.hidden_size
        if config.head == "dpt":
            assert config.dpt is not None
            self.decoder = DPTDecoder(
                config.dpt, hidden, config.backbone.hidden_act, config.num_labels
            )
        else:
            self.decoder = LinearHead(hidden, config.linear_layers, config.num_labels)

    @property
    def layer_indices(self) -> tuple[int, ...]:
        """The blocks whose tokens the head reads."""
        if isinstance(self.decoder, DPTDecoder):
            return self.decoder.layer_indices
        depth = self.config.backbone.num_hidden_layers
        return tuple(range(depth - self.config.linear_layers, depth))

    # ---- forward ------------------------------------------------------------------------
    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Tokens before the first block. In transformers' DPT layout the position embeddings
        are resized bilinearly (its ``_resize_pos_embed``); otherwise by the backbone's rule."""
        if not self.config.in_dpt_layout:
            return self.backbone.embed(pixel_values)
        backbone = self.backbone
        patch = self.config.patch_size
        grid = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
        patches = backbone.patch_embed(pixel_values)
        positions = _bilinear_positions(backbone.pos_embed, grid, self.config.backbone.grid_size)
        tokens = torch.cat([*backbone.prefix_tokens(patches.shape[0]), patches], dim=1)
        return backbone.pos_drop(tokens + positions)

    def block_tokens(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """The tokens after each block in ``layer_indices`` (blocks past the last are skipped);
        through the final LayerNorm for the linear head, as DINOv2's protocol reads them."""
        wanted = self.layer_indices
        x = self.embed(pixel_values)
        found: dict[int, torch.Tensor] = {}
        for index, block in enumerate(self.backbone.blocks[: max(wanted) + 1]):
            x, _ = block(x)
            if index in wanted:
                found[index] = x
        tokens = [found[index] for index in wanted]
        if isinstance(self.decoder, LinearHead):
            norm = self.backbone.norm
            tokens = [norm(t) for t in tokens]
        return tokens

    def forward(self, pixel_values: torch.Tensor) -> SegmentationOutput:
        patch = self.config.patch_size
        grid = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
        tokens = self.block_tokens(pixel_values)
        logits, auxiliary = self.decoder(tokens, grid, self.backbone.num_prefix_tokens)
        return SegmentationOutput(logits, auxiliary)

    def forward_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, classes, h, w) logits at the head's resolution."""
        return self.forward(pixel_values).logits

    def forward_embedding(
        self, pixel_values: torch.Tensor, pool: str | None = None
    ) -> torch.Tensor:
        return self.backbone.forward_embedding(pixel_values, pool)

    # ---- the rest of the protocol -------------------------------------------------------
    @property
    def capabilities(self) -> Capabilities:
        return dataclasses.replace(
            self.backbone.capabilities,
            attention_maps=False,
            int8=False,
            onnx_export=False,
            cls_fast_path=False,
            dense=True,
        )

    def reset_head(self, id2label: dict[int, str]) -> None:
        """New classifier layers for these classes (the rest of the decoder is kept)."""
        self.config = self.config.replace(id2label=dict(id2label))
        self.decoder.reset_classes(len(id2label))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_image(self, image_hw: tuple[int, int] | None = None) -> int:
        """Floating-point operations of one forward pass (counted by torch's FlopCounterMode)."""
        from torch.utils.flop_counter import FlopCounterMode

        height, width = image_hw or self.config.image_hw
        device = next(self.parameters()).device
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            self.forward_logits(torch.zeros(1, 3, height, width, device=device))
        return int(counter.get_total_flops())


def _headless(backbone: ViT) -> ViT:
    """``backbone`` without its classification head and pooler (the decoder classifies)."""
    backbone.head = nn.Identity()
    backbone.pooler = None
    backbone.config = backbone.config.replace(
        num_labels=0,
        id2label={},
        thresholds=None,
        add_pooling_layer=False,
        classifier_uses_pooler=False,
    )
    return backbone


def _bilinear_positions(
    pos_embed: torch.Tensor, grid: tuple[int, int], old_grid: tuple[int, int]
) -> torch.Tensor:
    """transformers DPT's ``_resize_pos_embed``: the grid part resized bilinearly, [CLS] kept."""
    if grid == old_grid:
        return pos_embed
    prefix, positions = pos_embed[:, :1], pos_embed[0, 1:]
    positions = positions.reshape(1, *old_grid, -1).permute(0, 3, 1, 2)
    positions = F.interpolate(positions, size=grid, mode="bilinear")
    positions = positions.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)
    return torch.cat([prefix, positions], dim=1)


def upsample_logits(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Logits resized to ``size`` as transformers' post-processing does (bilinear, corners not
    aligned); unchanged when already that size."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
