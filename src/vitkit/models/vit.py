"""The Vision Transformer of "An Image is Worth 16x16 Words" (Dosovitskiy et al., 2021), in one file.

    pixels -> PatchEmbed -> [CLS] + position embeddings -> Block x L -> LayerNorm
           -> [CLS] token -> (pooler: dense + tanh) -> head -> logits

and the variants DINOv2 and the pathology foundation models are built from (see
``vitkit.models.config``): LayerScale on each residual branch, register tokens after [CLS],
a SwiGLU MLP, no [CLS] token, position embeddings for the patches only, average or
[CLS]+average pooling and a LayerNorm after the pooling (``fc_norm``). With all of them off
the module is exactly the plain ViT above, with the same parameter names.

Parameter names follow timm (``blocks.0.attn.qkv``): one fused QKV projection per block, run
through ``F.scaled_dot_product_attention``. Foreign names (HF, timm, Google .npz) are mapped at
load time by ``vitkit.checkpoints``; nothing here knows about file formats.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.errors import PoolError
from vitkit.models.config import ViTConfig
from vitkit.models.families import pooler_is_cls
from vitkit.models.posembed import resample_pos_embed
from vitkit.models.protocol import POOLS, Capabilities

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,  # exact erf GELU: what HF ("gelu") and timm use
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
    "silu": nn.SiLU,  # the SwiGLU gate
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
    """Pixels to one token per patch: a linear projection of each non-overlapping patch (the
    paper's), or, with ``patch_embed="conv"``, a convolutional stem (see ``conv_stem``)."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.stem: nn.Module | None = None
        if config.patch_embed == "conv":
            self.stem, width = conv_stem(config)
            self.proj = nn.Conv2d(width, config.hidden_size, 1)
        else:
            self.proj = nn.Conv2d(
                config.num_channels, config.hidden_size, config.patch_size, stride=config.patch_size
            )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        height, width = pixel_values.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of the patch size {self.patch_size}"
            )
        features = pixel_values if self.stem is None else self.stem(pixel_values)
        return self.proj(features).flatten(2).transpose(1, 2)  # (B, rows*cols, dim)


def conv_stem(config: ViTConfig) -> tuple[nn.Sequential, int]:
    """Xiao et al. 2021's stem: log2(patch) 3x3 stride-2 convolutions, widths doubling up to half
    the model's (ViT-Tiny at patch 4: 48, 96), each followed by a per-image normalisation and
    GELU; returns the stem and its output width (a 1x1 convolution then projects to the model).

    GroupNorm(1, C) normalises each image on its own where the paper's stem uses BatchNorm: a
    batch statistic would make the result depend on the micro-batch and the number of processes,
    which vitkit's training keeps out (the same settings train the same model on 1 or N)."""
    steps = config.patch_size.bit_length() - 1
    widths = [max(8, config.hidden_size // 2 ** (steps - i)) for i in range(steps)]
    layers: list[nn.Module] = []
    channels = config.num_channels
    for width in widths:
        layers += [
            nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False),
            nn.GroupNorm(1, width),
            nn.GELU(),
        ]
        channels = width
    return nn.Sequential(*layers), channels


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
    """fc2(act(fc1(x))); with ``use_swiglu_ffn``, fc2(silu(a) * b) where [a; b] = fc1(x).

    The SwiGLU layout is timm's ``SwiGLUPacked`` (gate first) and DINOv2's ``weights_in``:
    one fc1 with both halves stacked, so either file maps onto it without reshuffling.
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.gated = config.use_swiglu_ffn
        width = config.intermediate_size * (2 if self.gated else 1)
        self.fc1 = nn.Linear(config.hidden_size, width)
        self.act = _ACTIVATIONS[config.hidden_act]()
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        if self.gated:
            gate, value = x.chunk(2, dim=-1)
            x = self.act(gate) * value
        else:
            x = self.act(x)
        return self.drop(self.fc2(self.drop(x)))


class LayerScale(nn.Module):
    """A learned per-channel scale on a residual branch (CaiT; DINOv2's ``lambda1``, timm's ``gamma``)."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def _layer_scale(config: ViTConfig) -> nn.Module:
    if config.layerscale_value is None:
        return nn.Identity()
    return LayerScale(config.hidden_size, config.layerscale_value)


class DropPath(nn.Module):
    """Stochastic depth per sample: ``torchvision.ops.StochasticDepth(p, mode="row")``, the
    same random draws and arithmetic, without importing torchvision (whose import pulls in
    torch._dynamo: ~2 s of CPU at every start-up of a command that never trains)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival_rate = 1.0 - self.p
        noise = torch.empty([x.shape[0]] + [1] * (x.ndim - 1), dtype=x.dtype, device=x.device)
        noise = noise.bernoulli_(survival_rate)
        if survival_rate > 0.0:
            noise.div_(survival_rate)
        return x * noise

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm(x))), then x + ls2(mlp(norm(x))).

    ``ls1``/``ls2`` are LayerScale when the config has ``layerscale_value``, else identities.
    """

    def __init__(self, config: ViTConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = Attention(config)
        self.ls1 = _layer_scale(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = Mlp(config)
        self.ls2 = _layer_scale(config)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self, x: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn_out, weights = self.attn(self.norm1(x), need_weights)
        x = x + self.drop_path(self.ls1(attn_out))
        x = x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
        return x, weights

    def forward_cls(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output at the [CLS] position only, (B, 1, dim): inference, no drop-path."""
        cls = x[:, :1] + self.ls1(self.attn.forward_cls(self.norm1(x)))
        return cls + self.ls2(self.mlp(self.norm2(cls)))


class Pooler(nn.Module):
    """Dense + tanh on [CLS]: HF's pooler, Google's ``pre_logits``, the pre-training MLP's hidden layer."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = nn.Tanh() if config.pooler_act == "tanh" else _ACTIVATIONS[config.pooler_act]()

    def forward(self, cls_token: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(cls_token))


def pool_tokens(
    tokens: torch.Tensor,
    kind: str,
    num_prefix_tokens: int,
    norm: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
) -> torch.Tensor:
    """(B, N, D) tokens -> "cls" (B, D), "mean" of the patch tokens (prefix tokens left out),
    "cls+mean" (B, 2D) or "tokens" (unchanged); ``norm`` (fc_norm) applies to each pooled vector."""
    if kind == "tokens":
        return tokens
    parts = []
    if "cls" in kind:
        parts.append(norm(tokens[:, 0]))
    if "mean" in kind:
        parts.append(norm(tokens[:, num_prefix_tokens:].mean(dim=1)))
    if not parts:
        raise PoolError(f"unknown pool {kind!r}: use one of {', '.join(POOLS)}")
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


class ViT(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.hidden_size
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if config.class_token else None
        self.reg_token = (
            nn.Parameter(torch.zeros(1, config.num_register_tokens, dim))
            if config.num_register_tokens
            else None
        )
        positions = config.num_patches + config.num_pos_embed_prefix
        self.pos_embed = nn.Parameter(torch.zeros(1, positions, dim))
        self.pos_drop = nn.Dropout(config.hidden_dropout_prob)
        # Stochastic depth grows linearly with depth (DeiT/timm); plain floats so meta-device init works.
        depth = config.num_hidden_layers
        drop_rates = [config.drop_path_rate * i / max(1, depth - 1) for i in range(depth)]
        self.blocks = nn.ModuleList(Block(config, rate) for rate in drop_rates)
        # timm's fc_norm: the final LayerNorm moves from the tokens to the pooled vector.
        self.norm = (
            nn.Identity() if config.fc_norm else nn.LayerNorm(dim, eps=config.layer_norm_eps)
        )
        self.fc_norm = (
            nn.LayerNorm(dim, eps=config.layer_norm_eps) if config.fc_norm else nn.Identity()
        )
        self.pooler = Pooler(config) if config.add_pooling_layer else None
        self.head: nn.Module = (
            nn.Linear(config.pooled_size, config.num_labels) if config.num_labels else nn.Identity()
        )
        self.init_weights()

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: [CLS] and the register tokens (a DeiT student: + distillation)."""
        return self.config.num_prefix_tokens

    # ---- initialisation -----------------------------------------------------------------
    def init_weights(self) -> None:
        """Truncated-normal weights (std = initializer_range), zero biases, as HF and timm do;
        LayerScale at ``layerscale_value`` and register tokens near zero, as timm does."""
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
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=std)
        if self.reg_token is not None:
            nn.init.normal_(self.reg_token, std=1e-6)

    def reset_head(self, id2label: dict[int, str]) -> None:
        """Replace the head with a zero-initialised linear layer for new classes (the paper's recipe).

        The new head reads what ``global_pool`` pools (with ``fc_norm`` where the model has it):
        [CLS], the mean patch token, or both concatenated.
        """
        # The old head's decision thresholds mean nothing for the new one.
        self.config = self.config.replace(
            num_labels=len(id2label), id2label=dict(id2label), thresholds=None
        )
        device = self.pos_embed.device
        head = nn.Linear(self.config.pooled_size, len(id2label), device=device)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        self.head = head

    # ---- forward ------------------------------------------------------------------------
    def position_embeddings(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position embeddings for ``grid``, resampled on the fly when the input size differs.

        Plain bicubic (no antialiasing) by default: a call at another size then equals HF's ViT
        and Dinov2 with ``interpolate_pos_encoding``; with ``dynamic_img_size``, antialiased
        bicubic, as timm's ``dynamic_img_size`` and HF's Dinov2WithRegisters do. (Load-time
        resampling in ``vitkit.checkpoints`` antialiases as timm does.)
        """
        if grid == self.config.grid_size:
            return self.pos_embed
        return resample_pos_embed(
            self.pos_embed,
            grid,
            self.config.grid_size,
            num_prefix_tokens=0 if self.config.no_embed_class else self.num_prefix_tokens,
            antialias=self.config.dynamic_img_size,
        )

    def prefix_tokens(self, batch: int) -> list[torch.Tensor]:
        """The learned tokens put before the patches ([CLS], then registers), each (batch, n, dim)."""
        tokens = [self.cls_token] if self.cls_token is not None else []
        if self.reg_token is not None:
            tokens.append(self.reg_token)
        return [token.expand(batch, -1, -1) for token in tokens]

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        grid = (
            pixel_values.shape[-2] // self.config.patch_size,
            pixel_values.shape[-1] // self.config.patch_size,
        )
        patches = self.patch_embed(pixel_values)
        prefix = self.prefix_tokens(patches.shape[0])
        positions = self.position_embeddings(grid)
        if self.config.no_embed_class:  # the patches alone carry positions (timm, DeiT III)
            tokens = torch.cat([*prefix, patches + positions], dim=1)
        else:
            tokens = torch.cat([*prefix, patches], dim=1) + positions
        return self.pos_drop(tokens)

    def forward_features(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
        """Tokens after the final LayerNorm (none with ``fc_norm``), plus per-layer attentions /
        hidden states if asked."""
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

    def pool(self, tokens: torch.Tensor, kind: str | None = None) -> torch.Tensor:
        """One embedding per image from the final tokens (``forward_features``).

        ``kind``: "cls", "mean" (of the patch tokens: [CLS] and registers left out), "cls+mean"
        (both concatenated), "pooler" (what transformers returns as pooler_output), "tokens"
        (all of them, unpooled); None: the model's ``config.default_pool``, from
        ``global_pool``. ``fc_norm`` models normalise each pooled vector, as timm does.
        """
        kind = self.check_pool(kind)
        if kind == "pooler":
            pooled = self.pooler_output(tokens)
            assert pooled is not None  # check_pool refused it otherwise
            return pooled
        return pool_tokens(tokens, kind, self.num_prefix_tokens, self.fc_norm)

    def check_pool(self, kind: str | None) -> str:
        """The pool ``pool(tokens, kind)`` will use; PoolError if this model cannot give it."""
        kind = kind or self.config.default_pool
        problem = self._pool_problem(kind)
        if problem is not None:
            raise PoolError(problem)
        return kind

    def _pool_problem(self, kind: str) -> str | None:
        if kind not in POOLS:
            return f"unknown pool {kind!r}: use one of {', '.join(POOLS)}"
        if "cls" in kind and self.cls_token is None:
            return f"pool {kind!r} needs a [CLS] token and this model has none: use mean"
        if kind == "pooler" and self.pooler is None and not pooler_is_cls(self.config):
            return (
                "this model has no pooler (dense+tanh) layer: use pool "
                f"{self.config.default_pool} (its default), cls or mean"
            )
        return None

    def embedding_size(self, kind: str | None = None) -> int:
        """Width of ``pool(tokens, kind)`` (per token for "tokens")."""
        kind = self.check_pool(kind)
        return self.config.hidden_size * (2 if kind == "cls+mean" else 1)

    def pooler_output(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """transformers' pooler_output: dense + tanh on [CLS] for a ViT with a pooler; the
        normalised [CLS] itself for DINOv2 (Dinov2Model's pooler_output); else None."""
        if self.pooler is not None:
            return self.pooler(tokens[:, 0])
        if pooler_is_cls(self.config):
            return tokens[:, 0]
        return None

    def forward_head(self, tokens: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(logits, pooler_output) from the normalised tokens."""
        pooled = self.pooler_output(tokens)
        if not self.config.num_labels:
            return None, pooled
        if self.config.classifier_uses_pooler and self.pooler is not None:
            return self.head(self.pooler(tokens[:, 0])), pooled
        return self.head(self.pool(tokens, self.config.default_pool)), pooled

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

    @property
    def cls_only_logits_exact(self) -> bool:
        """Whether the logits depend on the [CLS] token alone, so that the last block may run
        for [CLS] only (``forward_logits``). Not with average pooling, and not in a subclass
        with its own ``forward`` (a DeiT student's second head reads the distillation token)."""
        return (
            self.config.global_pool == "token"
            and self.cls_token is not None
            and type(self).forward is ViT.forward
        )

    def forward_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Logits alone, for classification: the same numbers as ``forward(...).logits``, faster.

        When the head reads only the [CLS] token (``cls_only_logits_exact``), the last block
        needs the other tokens as keys and values but never their own outputs: it runs its
        projection and MLP on [CLS] alone. That skips 1/12 of ViT-B's MLP and projection work
        (~6% of its FLOPs). Otherwise (average pooling, ...) this is the full forward.
        """
        if not self.config.num_labels:
            raise ValueError("forward_logits needs a classification head (num_labels > 0)")
        if not self.cls_only_logits_exact:
            logits = self(pixel_values).logits
            assert logits is not None
            return logits
        logits, _ = self.forward_head(self.norm(self._cls_after_last_block(pixel_values)))
        assert logits is not None
        return logits

    def _cls_after_last_block(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 1, dim): [CLS] after the last block, which runs its projection and MLP for
        [CLS] alone (the other tokens are only its keys and values there)."""
        x = self.embed(pixel_values)
        for block in self.blocks[:-1]:
            x, _ = block(x)
        last = self.blocks[-1]
        assert isinstance(last, Block)
        return last.forward_cls(x)

    def forward_embedding(
        self, pixel_values: torch.Tensor, pool: str | None = None
    ) -> torch.Tensor:
        """One embedding per image (``pool``, see ``pool``; None: the family's documented one),
        or every token, (B, tokens, dim), for "tokens"."""
        pool = self.check_pool(pool)  # before any work
        reads_cls_only = pool == "cls" or (pool == "pooler" and self.cls_token is not None)
        if reads_cls_only:  # exact: the other tokens' last-block outputs would be thrown away
            return self.pool(self.norm(self._cls_after_last_block(pixel_values)), pool)
        tokens, _, _ = self.forward_features(pixel_values)
        return self.pool(tokens, pool)

    @property
    def capabilities(self) -> Capabilities:
        pools = tuple(pool for pool in POOLS if self._pool_problem(pool) is None)
        return dataclasses.replace(
            _CAPABILITIES,
            pools=pools,
            default_pool=self.config.default_pool,
            cls_fast_path=self.cls_only_logits_exact,
        )

    # ---- sizes --------------------------------------------------------------------------
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_image(self, image_hw: tuple[int, int] | None = None) -> int:
        """Multiply-accumulates x 2 of one forward pass (matmuls only; softmax/norms are noise)."""
        cfg = self.config
        height, width = image_hw or cfg.image_hw
        patches = (height // cfg.patch_size) * (width // cfg.patch_size)
        tokens, dim, hidden = (
            patches + self.num_prefix_tokens,
            cfg.hidden_size,
            cfg.intermediate_size,
        )
        patch_embed = patches * dim * cfg.num_channels * cfg.patch_size**2
        if cfg.patch_embed == "conv":  # stem convolutions, then the 1x1 projection
            patch_embed = (
                sum(
                    (height // 2 ** (i + 1))
                    * (width // 2 ** (i + 1))
                    * 9
                    * conv.in_channels
                    * conv.out_channels
                    for i, conv in enumerate(
                        m
                        for m in self.patch_embed.modules()
                        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
                    )
                )
                + patches * dim * self.patch_embed.proj.in_channels
            )
        mlp = (3 if cfg.use_swiglu_ffn else 2) * dim * hidden  # SwiGLU: fc1 is twice as wide
        per_block = tokens * (4 * dim * dim + mlp) + 2 * tokens * tokens * dim
        head = cfg.pooled_size * cfg.num_labels + (dim * dim if cfg.add_pooling_layer else 0)
        return 2 * (patch_embed + cfg.num_hidden_layers * per_block + head)
