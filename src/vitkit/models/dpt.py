"""The DPT decoder (Ranftl et al., "Vision Transformers for Dense Prediction", 2021).

    tokens of 4 blocks -> reassemble (readout, 1x1 projection, resize to 4x, 2x, 1x, 1/2x the
    patch grid) -> 3x3 convs to ``fusion_hidden_size`` -> fusion (coarse to fine: residual
    units, 2x bilinear upsampling) -> head (3x3 conv, BatchNorm, ReLU, 1x1 conv to classes,
    2x upsampling)

The module names are those of transformers' ``DPTNeck``, ``DPTSemanticSegmentationHead`` and
``DPTAuxiliaryHead`` (``modeling_dpt.py``), so a ``DPTForSemanticSegmentation`` file's
``neck.*``, ``head.*`` and ``auxiliary_head.*`` tensors load with their own names; only the ViT
encoder is renamed (``vitkit.checkpoints.hf_dpt``). Nothing here depends on the encoder beyond
its token width and prefix tokens, so the same decoder sits on DINOv2 and the pathology
foundation ViTs (``vitkit.models.segmentation``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

READOUT_TYPES = ("project", "add", "ignore")


@dataclass
class DPTHeadConfig:
    """The decoder's settings, named and defaulted as transformers' ``DPTConfig`` names them."""

    backbone_out_indices: tuple[int, ...] = (2, 5, 8, 11)
    readout_type: str = "project"
    reassemble_factors: tuple[float, ...] = (4, 2, 1, 0.5)
    neck_hidden_sizes: tuple[int, ...] = (96, 192, 384, 768)
    fusion_hidden_size: int = 256
    head_in_index: int = -1
    use_batch_norm_in_fusion_residual: bool = False
    use_bias_in_fusion_residual: bool | None = None
    use_auxiliary_head: bool = True
    auxiliary_loss_weight: float = 0.4
    semantic_classifier_dropout: float = 0.1

    def __post_init__(self) -> None:
        self.backbone_out_indices = tuple(int(i) for i in self.backbone_out_indices)
        # whole factors stay ints: transformers builds its transposed convs with kernel_size=factor
        self.reassemble_factors = tuple(
            int(f) if float(f).is_integer() else float(f) for f in self.reassemble_factors
        )
        self.neck_hidden_sizes = tuple(int(s) for s in self.neck_hidden_sizes)
        if self.readout_type not in READOUT_TYPES:
            raise ValueError(
                f"readout_type {self.readout_type!r}: use one of {', '.join(READOUT_TYPES)}"
            )
        lengths = {
            len(self.backbone_out_indices),
            len(self.reassemble_factors),
            len(self.neck_hidden_sizes),
        }
        if len(lengths) != 1:
            raise ValueError(
                "backbone_out_indices, reassemble_factors and neck_hidden_sizes need one entry "
                f"per stage: got {self.backbone_out_indices}, {self.reassemble_factors}, "
                f"{self.neck_hidden_sizes}"
            )

    @classmethod
    def for_depth(
        cls, depth: int, hidden_size: int, patch_size: int = 16, **changes: Any
    ) -> DPTHeadConfig:
        """DPT's head sized for another encoder: four evenly spaced blocks (DPT's (2, 5, 8, 11)
        of 12), neck widths scaled to the token width (its (96, 192, 384, 768) at 768), and
        reassemble factors that bring the logits to the input size (its (4, 2, 1, 0.5) at
        patch 16: the finest map is ``patch / 4`` times the patch grid, then fusion and head
        upsample 4x; halved at each coarser stage)."""
        if depth < 4:
            raise ValueError(f"a DPT head reads 4 blocks: the backbone has {depth}")
        indices = tuple(depth * (i + 1) // 4 - 1 for i in range(4))
        sizes = tuple(max(8, hidden_size * s // 768) for s in (96, 192, 384, 768))
        finest = 2 ** max(0, round(math.log2(max(patch_size, 4) / 4)))
        factors = tuple(finest / 2**stage for stage in range(4))
        fields: dict[str, Any] = {"backbone_out_indices": indices, "neck_hidden_sizes": sizes}
        fields.update(reassemble_factors=factors, fusion_hidden_size=max(16, hidden_size // 3))
        return cls(**{**fields, **changes})

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DPTHeadConfig:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
}


class DPTReassembleLayer(nn.Module):
    """1x1 projection to the stage's width, then resize: transposed conv (up), 3x3 stride conv
    (down) or nothing."""

    def __init__(self, hidden_size: int, channels: int, factor: float) -> None:
        super().__init__()
        self.projection = nn.Conv2d(hidden_size, channels, kernel_size=1)
        self.resize: nn.Module
        if factor > 1:
            size = int(factor)
            self.resize = nn.ConvTranspose2d(channels, channels, kernel_size=size, stride=size)
        elif factor == 1:
            self.resize = nn.Identity()
        else:
            stride = int(1 / factor)
            self.resize = nn.Conv2d(channels, channels, kernel_size=3, stride=stride, padding=1)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.resize(self.projection(hidden_state))


class DPTReassembleStage(nn.Module):
    """Token sequences -> feature maps at four scales, the [CLS] readout folded in."""

    def __init__(self, config: DPTHeadConfig, hidden_size: int, hidden_act: str) -> None:
        super().__init__()
        self.readout_type = config.readout_type
        self.layers = nn.ModuleList(
            DPTReassembleLayer(hidden_size, channels, factor)
            for channels, factor in zip(
                config.neck_hidden_sizes, config.reassemble_factors, strict=True
            )
        )
        if config.readout_type == "project":
            self.readout_projects = nn.ModuleList(
                nn.Sequential(nn.Linear(2 * hidden_size, hidden_size), _ACTIVATIONS[hidden_act]())
                for _ in config.neck_hidden_sizes
            )

    def forward(
        self, hidden_states: list[torch.Tensor], grid: tuple[int, int], num_prefix: int
    ) -> list[torch.Tensor]:
        out = []
        for index, tokens in enumerate(hidden_states):
            cls_token, patches = tokens[:, 0], tokens[:, num_prefix:]
            if self.readout_type == "project":
                readout = cls_token.unsqueeze(1).expand_as(patches)
                patches = self.readout_projects[index](torch.cat((patches, readout), -1))
            elif self.readout_type == "add":
                patches = patches + cls_token.unsqueeze(1)
            batch, _, channels = patches.shape
            maps = patches.transpose(1, 2).reshape(batch, channels, *grid)
            out.append(self.layers[index](maps))
        return out


class DPTPreActResidualLayer(nn.Module):
    """ReLU, 3x3 conv (BN), ReLU, 3x3 conv (BN), plus the input: DPT's residual conv unit."""

    def __init__(self, config: DPTHeadConfig) -> None:
        super().__init__()
        width = config.fusion_hidden_size
        self.use_batch_norm = config.use_batch_norm_in_fusion_residual
        bias = config.use_bias_in_fusion_residual
        bias = not self.use_batch_norm if bias is None else bias
        self.activation1 = nn.ReLU()
        self.convolution1 = nn.Conv2d(width, width, kernel_size=3, padding=1, bias=bias)
        self.activation2 = nn.ReLU()
        self.convolution2 = nn.Conv2d(width, width, kernel_size=3, padding=1, bias=bias)
        if self.use_batch_norm:
            self.batch_norm1 = nn.BatchNorm2d(width)
            self.batch_norm2 = nn.BatchNorm2d(width)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        residual = hidden_state
        hidden_state = self.convolution1(self.activation1(hidden_state))
        if self.use_batch_norm:
            hidden_state = self.batch_norm1(hidden_state)
        hidden_state = self.convolution2(self.activation2(hidden_state))
        if self.use_batch_norm:
            hidden_state = self.batch_norm2(hidden_state)
        return hidden_state + residual


class DPTFeatureFusionLayer(nn.Module):
    """Add the (resized) finer map through a residual unit, refine, upsample 2x, project."""

    def __init__(self, config: DPTHeadConfig) -> None:
        super().__init__()
        width = config.fusion_hidden_size
        self.projection = nn.Conv2d(width, width, kernel_size=1)
        self.residual_layer1 = DPTPreActResidualLayer(config)
        self.residual_layer2 = DPTPreActResidualLayer(config)

    def forward(self, hidden_state: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        if residual is not None:
            if hidden_state.shape != residual.shape:
                residual = F.interpolate(
                    residual, size=hidden_state.shape[2:], mode="bilinear", align_corners=False
                )
            hidden_state = hidden_state + self.residual_layer1(residual)
        hidden_state = self.residual_layer2(hidden_state)
        hidden_state = F.interpolate(
            hidden_state, scale_factor=2, mode="bilinear", align_corners=True
        )
        return self.projection(hidden_state)


class DPTFeatureFusionStage(nn.Module):
    def __init__(self, config: DPTHeadConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DPTFeatureFusionLayer(config) for _ in config.neck_hidden_sizes)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        fused: list[torch.Tensor] = []
        current: torch.Tensor | None = None
        for feature, layer in zip(features[::-1], self.layers, strict=True):  # coarse to fine
            current = layer(feature, None) if current is None else layer(current, feature)
            fused.append(current)
        return fused


class DPTNeck(nn.Module):
    """Reassemble, 3x3 convs to the fusion width, fuse."""

    def __init__(self, config: DPTHeadConfig, hidden_size: int, hidden_act: str) -> None:
        super().__init__()
        self.reassemble_stage = DPTReassembleStage(config, hidden_size, hidden_act)
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, config.fusion_hidden_size, kernel_size=3, padding=1, bias=False)
            for channels in config.neck_hidden_sizes
        )
        self.fusion_stage = DPTFeatureFusionStage(config)

    def forward(
        self, hidden_states: list[torch.Tensor], grid: tuple[int, int], num_prefix: int
    ) -> list[torch.Tensor]:
        maps = self.reassemble_stage(hidden_states, grid, num_prefix)
        return self.fusion_stage([conv(m) for conv, m in zip(self.convs, maps, strict=True)])


def _classifier(width: int, num_labels: int, dropout: float) -> list[nn.Module]:
    return [
        nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Conv2d(width, num_labels, kernel_size=1),
    ]


class DPTSemanticSegmentationHead(nn.Module):
    """The classifier on the finest fused map, upsampled 2x (to the input size for patch 16)."""

    def __init__(self, config: DPTHeadConfig, num_labels: int) -> None:
        super().__init__()
        self.head_in_index = config.head_in_index
        width = config.fusion_hidden_size
        upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.head = nn.Sequential(
            *_classifier(width, num_labels, config.semantic_classifier_dropout), upsample
        )

    def forward(self, fused: list[torch.Tensor]) -> torch.Tensor:
        return self.head(fused[self.head_in_index])


class DPTAuxiliaryHead(nn.Module):
    """A second classifier on the finest fused map: a training-time loss term only."""

    def __init__(self, config: DPTHeadConfig, num_labels: int) -> None:
        super().__init__()
        self.head = nn.Sequential(*_classifier(config.fusion_hidden_size, num_labels, 0.1))

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.head(fused)


class DPTDecoder(nn.Module):
    """Neck + segmentation head (+ auxiliary head): block tokens -> (logits, auxiliary logits).

    The auxiliary logits are computed in training mode only (they are a loss term; inference
    never reads them).
    """

    def __init__(
        self, config: DPTHeadConfig, hidden_size: int, hidden_act: str, num_labels: int
    ) -> None:
        super().__init__()
        self.config = config
        self.neck = DPTNeck(config, hidden_size, hidden_act)
        self.head = DPTSemanticSegmentationHead(config, num_labels)
        self.auxiliary_head = (
            DPTAuxiliaryHead(config, num_labels) if config.use_auxiliary_head else None
        )

    @property
    def layer_indices(self) -> tuple[int, ...]:
        return self.config.backbone_out_indices

    def forward(
        self, hidden_states: list[torch.Tensor], grid: tuple[int, int], num_prefix: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        fused = self.neck(hidden_states, grid, num_prefix)
        logits = self.head(fused)
        auxiliary = None
        if self.auxiliary_head is not None and self.training:
            auxiliary = self.auxiliary_head(fused[-1])
        return logits, auxiliary

    def reset_classes(self, num_labels: int) -> None:
        """New, freshly initialised classifier layers for ``num_labels`` classes."""
        device = next(self.parameters()).device
        self.head = DPTSemanticSegmentationHead(self.config, num_labels).to(device)
        if self.auxiliary_head is not None:
            self.auxiliary_head = DPTAuxiliaryHead(self.config, num_labels).to(device)
