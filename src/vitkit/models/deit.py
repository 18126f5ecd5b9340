"""The DeiT student (Touvron et al., "Training data-efficient image transformers", 2021).

A ViT with one extra learned token, the *distillation token*, appended after [CLS]. Both travel
through every block; the [CLS] output feeds ``head`` (trained on the true labels), the
distillation-token output feeds ``head_dist`` (trained to match a teacher). At inference the two
heads' logits are averaged.

Parameter names are those of ``vitkit.models.vit.ViT`` plus timm's distilled-DeiT names
(``dist_token``, ``head_dist``); ``pos_embed`` has two prefix positions ([CLS], distillation)
before the patch grid. ``vitkit.checkpoints.hf_deit`` reads and writes it as an HF
``DeiTForImageClassificationWithTeacher`` directory; the losses live in
``vitkit.training.tasks.distill``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from vitkit.models.config import ViTConfig
from vitkit.models.protocol import Capabilities
from vitkit.models.vit import ViT, ViTOutput


# ---- the config -------------------------------------------------------------------------
@dataclass
class DeiTConfig(ViTConfig):
    """A ViTConfig whose config.json is HF's ``DeiTForImageClassificationWithTeacher``'s."""

    model_type: ClassVar[str] = "deit"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.add_pooling_layer:
            raise ValueError(
                "a DeiT student has no pooler (dense+tanh): build it with add_pooling_layer=False"
            )

    @property
    def num_prefix_tokens(self) -> int:
        """[CLS] and the distillation token."""
        return 2

    @classmethod
    def from_vit_config(cls, config: ViTConfig) -> DeiTConfig:
        """The same architecture as a student config (no pooler: DeiT has none)."""
        fields = dataclasses.asdict(config)
        fields.update(add_pooling_layer=False, classifier_uses_pooler=False)
        return cls(**fields)

    def to_hf_dict(self) -> dict[str, Any]:
        data = super().to_hf_dict()
        data["model_type"] = "deit"
        data["architectures"] = ["DeiTForImageClassificationWithTeacher"]
        for vit_only in ("add_pooling_layer", "classifier_uses_pooler"):
            data.pop(vit_only, None)
        return data


# ---- the student ------------------------------------------------------------------------
@dataclass
class DistilledViTOutput(ViTOutput):
    """``logits`` is the average of the two heads; each head's logits are kept too."""

    cls_logits: torch.Tensor | None = None
    dist_logits: torch.Tensor | None = None


class DistilledViT(ViT):
    """A ViT with a distillation token and a second head (DeiT's ``*_distilled`` models)."""

    num_prefix_tokens = 2
    config: DeiTConfig

    def __init__(self, config: ViTConfig) -> None:
        if config.add_pooling_layer:
            raise ValueError(
                "a DeiT student has no pooler (dense+tanh): build it with add_pooling_layer=False"
            )
        if config.variant_features:
            raise ValueError(
                f"a DeiT student is a plain ViT plus a distillation token; {config.variant_features} "
                "are not supported here"
            )
        if not isinstance(config, DeiTConfig):
            config = DeiTConfig.from_vit_config(config)
        super().__init__(config)
        dim = config.hidden_size
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches + 2, dim))
        self.head_dist: nn.Module = (
            nn.Linear(dim, config.num_labels) if config.num_labels else nn.Identity()
        )
        std = config.initializer_range
        nn.init.trunc_normal_(self.dist_token, std=std)
        nn.init.trunc_normal_(self.pos_embed, std=std)
        if isinstance(self.head_dist, nn.Linear):
            nn.init.trunc_normal_(self.head_dist.weight, std=std)
            nn.init.zeros_(self.head_dist.bias)

    def reset_head(self, id2label: dict[int, str]) -> None:
        """Zero-initialised heads (both) for new classes."""
        super().reset_head(id2label)
        head_dist = nn.Linear(self.config.hidden_size, len(id2label), device=self.pos_embed.device)
        nn.init.zeros_(head_dist.weight)
        nn.init.zeros_(head_dist.bias)
        self.head_dist = head_dist

    def prefix_tokens(self, batch: int) -> list[torch.Tensor]:
        """[CLS] then the distillation token, DeiT's order."""
        return [*super().prefix_tokens(batch), self.dist_token.expand(batch, -1, -1)]

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> DistilledViTOutput:
        tokens, attentions, hidden_states = self.forward_features(
            pixel_values, output_attentions, output_hidden_states
        )
        cls_logits = dist_logits = logits = None
        if self.config.num_labels:
            cls_logits = self.head(tokens[:, 0])
            dist_logits = self.head_dist(tokens[:, 1])
            logits = (cls_logits + dist_logits) / 2
        return DistilledViTOutput(
            logits, tokens, None, attentions, hidden_states, cls_logits, dist_logits
        )

    def forward_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The two heads' average (the inherited [CLS]-only path would skip the distillation head)."""
        logits = self.forward(pixel_values).logits
        if logits is None:
            raise ValueError("forward_logits needs a classification head (num_labels > 0)")
        return logits

    @property
    def capabilities(self) -> Capabilities:
        return dataclasses.replace(super().capabilities, cls_fast_path=False)

    @classmethod
    def from_vit(cls, vit: ViT) -> DistilledViT:
        """A student initialised from a ViT: the distillation token, its position and its head
        start as copies of [CLS]'s (so both heads agree before training)."""
        config = DeiTConfig.from_vit_config(vit.config)
        student = cls(config)
        state = {k: v for k, v in vit.state_dict().items() if not k.startswith("pooler.")}
        pos = state.pop("pos_embed")
        state["pos_embed"] = torch.cat([pos[:, :1], pos[:, :1], pos[:, 1:]], dim=1)
        state["dist_token"] = state["cls_token"].clone()
        if config.num_labels:
            state["head_dist.weight"] = state["head.weight"].clone()
            state["head_dist.bias"] = state["head.bias"].clone()
        student.load_state_dict(state)
        return student


def build_student(config: ViTConfig, id2label: dict[int, str]) -> DistilledViT:
    """A from-scratch student for ``id2label`` (heads sized for those classes)."""
    config = DeiTConfig.from_vit_config(config)
    return DistilledViT(config.replace(num_labels=len(id2label), id2label=dict(id2label)))
