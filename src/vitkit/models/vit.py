"""The Vision Transformer of "An Image is Worth 16x16 Words" (Dosovitskiy et al., 2021), in one file.

    pixels -> PatchEmbed -> [CLS] + position embeddings -> Block x L -> LayerNorm
           -> [CLS] token -> (pooler: dense + tanh) -> head -> logits

Parameter names follow timm (``blocks.0.attn.qkv``): one fused QKV projection per block, run
through ``F.scaled_dot_product_attention``. Foreign names (HF, timm, Google .npz) are mapped at
load time by ``vitkit.checkpoints``; nothing here knows about file formats.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from vitkit.models.config import ViTConfig
from vitkit.models.posembed import resample_pos_embed
from vitkit.models.protocol import POOLS, Capabilities, check_pool

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,  # exact erf GELU: what HF ("gelu") and timm use
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
}


# What a ViT offers the commands (see vitkit.models.protocol); "pooler" only with a pooler.
_CAPABILITIES = Capabilities(
    pools=POOLS,
    default_pool="cls",
    attention_maps=True,
    int8=True,
    onnx_export=True,
    cls_fast_path=True,
)


@dataclass
class ViTOutput:
    """What one forward pass returns. Fields not asked for are None."""

    logits: torch.Tensor | None
    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor | None
    attentions: tuple[torch.Tensor, ...] | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


class PatchEmbed(nn.Module):
    """Cut the image into non-overlapping patches and project each to ``hidden_size``."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.proj = nn.Conv2d(
            config.num_channels, config.hidden_size, config.patch_size, stride=config.patch_size
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        height, width = pixel_values.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of the patch size {self.patch_size}"
            )
        return self.proj(pixel_values).flatten(2).transpose(1, 2)  # (B, rows*cols, dim)


class Attention(nn.Module):
    """Multi-head self-attention with one fused QKV projection."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.scale = self.head_dim**-0.5
        self.dropout = config.attention_probs_dropout_prob
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.proj_drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, x: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        weights = None
        if need_weights:
            # The explicit path: only for explanation tools, which need the softmax weights.
            weights = (query * self.scale @ key.transpose(-2, -1)).softmax(dim=-1)
            out = F.dropout(weights, self.dropout, self.training) @ value
        else:
            out = F.scaled_dot_product_attention(
                query, key, value, dropout_p=self.dropout if self.training else 0.0
            )
        out = out.transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj_drop(self.proj(out)), weights

    def forward_cls(self, x: torch.Tensor) -> torch.Tensor:
        """Attention output for the [CLS] query only, (B, 1, dim); keys and values use all tokens."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        query = qkv[:, :1, 0].transpose(1, 2)  # (B, heads, 1, head_dim)
        key, value = qkv[:, :, 1:].permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(query, key, value)
        return self.proj(out.transpose(1, 2).reshape(batch, 1, dim))


class Mlp(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = _ACTIVATIONS[config.hidden_act]()
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ViTConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = Attention(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = Mlp(config)
        self.drop_path = StochasticDepth(drop_path, mode="row") if drop_path > 0 else nn.Identity()

    def forward(
        self, x: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn_out, weights = self.attn(self.norm1(x), need_weights)
        x = x + self.drop_path(attn_out)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, weights

    def forward_cls(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output at the [CLS] position only, (B, 1, dim): inference, no drop-path."""
        cls = x[:, :1] + self.attn.forward_cls(self.norm1(x))
        return cls + self.mlp(self.norm2(cls))


class Pooler(nn.Module):
    """Dense + tanh on [CLS]: HF's pooler, Google's ``pre_logits``, the pre-training MLP's hidden layer."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = nn.Tanh() if config.pooler_act == "tanh" else _ACTIVATIONS[config.pooler_act]()

    def forward(self, cls_token: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(cls_token))


class ViT(nn.Module):
    # Tokens before the patches: [CLS] here; a DeiT student adds its distillation token.
    num_prefix_tokens = 1

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.hidden_size
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches + 1, dim))
        self.pos_drop = nn.Dropout(config.hidden_dropout_prob)
        # Stochastic depth grows linearly with depth (DeiT/timm); plain floats so meta-device init works.
        depth = config.num_hidden_layers
        drop_rates = [config.drop_path_rate * i / max(1, depth - 1) for i in range(depth)]
        self.blocks = nn.ModuleList(Block(config, rate) for rate in drop_rates)
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.pooler = Pooler(config) if config.add_pooling_layer else None
        self.head: nn.Module = (
            nn.Linear(dim, config.num_labels) if config.num_labels else nn.Identity()
        )
        self.init_weights()

    # ---- initialisation -----------------------------------------------------------------
    def init_weights(self) -> None:
        """Truncated-normal weights (std = initializer_range), zero biases, as HF and timm do."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                nn.init.trunc_normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.pos_embed, std=std)
        nn.init.trunc_normal_(self.cls_token, std=std)

    def reset_head(self, id2label: dict[int, str]) -> None:
        """Replace the head with a zero-initialised linear layer for new classes (the paper's recipe)."""
        # The old head's decision thresholds mean nothing for the new one.
        self.config = self.config.replace(
            num_labels=len(id2label), id2label=dict(id2label), thresholds=None
        )
        device = self.pos_embed.device
        head = nn.Linear(self.config.hidden_size, len(id2label), device=device)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        self.head = head

    # ---- forward ------------------------------------------------------------------------
    def position_embeddings(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position embeddings for ``grid``, resampled on the fly when the input size differs.

        No antialiasing here, so a call at another size equals HF's
        ``interpolate_pos_encoding=True``; load-time resampling (checkpoints) antialiases as timm does.
        """
        if grid == self.config.grid_size:
            return self.pos_embed
        return resample_pos_embed(
            self.pos_embed,
            grid,
            self.config.grid_size,
            num_prefix_tokens=self.num_prefix_tokens,
            antialias=False,
        )

    def prefix_tokens(self, batch: int) -> list[torch.Tensor]:
        """The ``num_prefix_tokens`` learned tokens put before the patches, each (batch, 1, dim)."""
        return [self.cls_token.expand(batch, -1, -1)]

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        grid = (
            pixel_values.shape[-2] // self.config.patch_size,
            pixel_values.shape[-1] // self.config.patch_size,
        )
        patches = self.patch_embed(pixel_values)
        prefix = self.prefix_tokens(patches.shape[0])
        tokens = torch.cat([*prefix, patches], dim=1) + self.position_embeddings(grid)
        return self.pos_drop(tokens)

    def forward_features(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
        """Tokens after the final LayerNorm, plus per-layer attentions / hidden states if asked."""
        x = self.embed(pixel_values)
        attentions: list[torch.Tensor] = []
        hidden_states: list[torch.Tensor] = [x] if output_hidden_states else []
        for block in self.blocks:
            x, weights = block(x, output_attentions)
            if weights is not None:
                attentions.append(weights)
            if output_hidden_states:
                hidden_states.append(x)
        return (
            self.norm(x),
            tuple(attentions) if output_attentions else None,
            tuple(hidden_states) if output_hidden_states else None,
        )

    def forward_head(self, tokens: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(logits, pooler_output) from the normalised tokens."""
        cls_token = tokens[:, 0]
        pooled = self.pooler(cls_token) if self.pooler is not None else None
        if not self.config.num_labels:
            return None, pooled
        head_input = (
            pooled if self.config.classifier_uses_pooler and pooled is not None else cls_token
        )
        return self.head(head_input), pooled

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> ViTOutput:
        tokens, attentions, hidden_states = self.forward_features(
            pixel_values, output_attentions, output_hidden_states
        )
        logits, pooled = self.forward_head(tokens)
        return ViTOutput(logits, tokens, pooled, attentions, hidden_states)

    def forward_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Logits alone, for classification: the same numbers as ``forward(...).logits``, faster.

        The head reads only the [CLS] token, so the last block needs the other tokens as keys
        and values but never their own outputs: it runs its projection and MLP on [CLS] alone.
        That skips 1/12 of ViT-B's MLP and projection work (~6% of its FLOPs).
        """
        if not self.config.num_labels:
            raise ValueError("forward_logits needs a classification head (num_labels > 0)")
        x = self.embed(pixel_values)
        for block in self.blocks[:-1]:
            x, _ = block(x)
        last = self.blocks[-1]
        assert isinstance(last, Block)
        logits, _ = self.forward_head(self.norm(last.forward_cls(x)))
        assert logits is not None
        return logits

    def forward_embedding(self, pixel_values: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        """(B, dim) per image: final-norm [CLS] ("cls"), mean of the patch tokens ("mean"),
        dense+tanh on [CLS] ("pooler"); or every token, (B, tokens, dim) ("tokens")."""
        check_pool(self, pool)
        tokens, _, _ = self.forward_features(pixel_values)
        if pool == "tokens":
            return tokens
        if pool == "mean":
            return tokens[:, self.num_prefix_tokens :].mean(dim=1)
        if pool == "pooler" and self.pooler is not None:
            return self.pooler(tokens[:, 0])
        return tokens[:, 0]

    @property
    def capabilities(self) -> Capabilities:
        pools = POOLS if self.pooler is not None else tuple(p for p in POOLS if p != "pooler")
        return _CAPABILITIES.with_pools(pools)

    # ---- sizes --------------------------------------------------------------------------
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_image(self, image_hw: tuple[int, int] | None = None) -> int:
        """Multiply-accumulates x 2 of one forward pass (matmuls only; softmax/norms are noise)."""
        cfg = self.config
        height, width = image_hw or cfg.image_hw
        patches = (height // cfg.patch_size) * (width // cfg.patch_size)
        tokens, dim, hidden = patches + 1, cfg.hidden_size, cfg.intermediate_size
        patch_embed = patches * dim * cfg.num_channels * cfg.patch_size**2
        per_block = tokens * (4 * dim * dim + 2 * dim * hidden) + 2 * tokens * tokens * dim
        head = dim * (cfg.num_labels + (dim if cfg.add_pooling_layer else 0))
        return 2 * (patch_embed + cfg.num_hidden_layers * per_block + head)
