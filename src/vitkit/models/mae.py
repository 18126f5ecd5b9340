"""Masked autoencoder (He et al., 2021, "Masked Autoencoders Are Scalable Vision Learners").

    pixels -> patches + fixed sin-cos positions -> keep a random 25% (argsort of noise)
           -> [CLS] + kept patches -> ViT encoder blocks -> LayerNorm            (the encoder)
           -> linear to decoder width -> mask tokens where patches were dropped, unshuffled
           -> + fixed sin-cos positions -> light decoder blocks -> LayerNorm -> pixels per patch
    loss = mean squared error on the dropped patches only (per-patch normalised pixels with
           ``norm_pix_loss``)

The encoder is a plain vitkit ``ViT`` (headless, no pooler): after pre-training it is what
fine-tuning and embedding use, the decoder is dropped. The decoder is built from the same
``Block`` as the encoder. Masking, patch order, loss and the sin-cos tables follow
transformers' ``ViTMAEForPreTraining`` (itself a port of facebookresearch/mae) to the letter, so
the same weights and the same noise give the same loss and reconstruction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from vitkit.models.config import ViTConfig
from vitkit.models.posembed import sincos_2d_pos_embed
from vitkit.models.vit import Block, ViT

_DECODER_FIELDS = (
    "decoder_hidden_size",
    "decoder_num_hidden_layers",
    "decoder_num_attention_heads",
    "decoder_intermediate_size",
    "mask_ratio",
    "norm_pix_loss",
)
# vitkit-only or ViT-only fields that ViTMAEConfig does not have.
_NOT_IN_MAE_CONFIG = (
    "id2label",
    "label2id",
    "add_pooling_layer",
    "classifier_uses_pooler",
    "drop_path_rate",
    "pooler_act",
    "pooler_output_size",
    "encoder_stride",
)


@dataclass
class MAEConfig:
    """An encoder (a ViTConfig) plus MAE's decoder and masking settings, as ViTMAEConfig names them.

    The paper's defaults: decoder 8 blocks of width 512 with 16 heads, 75% of patches masked.
    """

    encoder: ViTConfig = field(default_factory=ViTConfig)
    decoder_hidden_size: int = 512
    decoder_num_hidden_layers: int = 8
    decoder_num_attention_heads: int = 16
    decoder_intermediate_size: int = 2048
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False

    model_type: ClassVar[str] = "vit_mae"

    def __post_init__(self) -> None:
        height, width = self.encoder.image_hw
        if height != width:
            raise ValueError(
                f"MAE needs a square image (its sin-cos table and patch order assume one), "
                f"not {height}x{width}"
            )
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), not {self.mask_ratio}")
        if self.keep_count < 1:
            raise ValueError(
                f"mask_ratio {self.mask_ratio} keeps no patch of {self.encoder.num_patches}: lower it"
            )
        for name, width_ in (
            ("hidden_size", self.encoder.hidden_size),
            ("decoder_hidden_size", self.decoder_hidden_size),
        ):
            if width_ % 4:
                raise ValueError(f"{name} {width_} must be divisible by 4 for sin-cos positions")
        if self.decoder_hidden_size % self.decoder_num_attention_heads:
            raise ValueError(
                f"decoder_hidden_size {self.decoder_hidden_size} is not divisible by "
                f"decoder_num_attention_heads {self.decoder_num_attention_heads}"
            )

    @property
    def keep_count(self) -> int:
        """Patches the encoder sees: ``int(N * (1 - mask_ratio))``, rounding as MAE does."""
        return int(self.encoder.num_patches * (1 - self.mask_ratio))

    @property
    def patch_pixels(self) -> int:
        return self.encoder.patch_size**2 * self.encoder.num_channels

    def decoder_config(self) -> ViTConfig:
        """The decoder blocks' architecture, as a ViTConfig for ``Block``."""
        return ViTConfig(
            hidden_size=self.decoder_hidden_size,
            num_hidden_layers=self.decoder_num_hidden_layers,
            num_attention_heads=self.decoder_num_attention_heads,
            intermediate_size=self.decoder_intermediate_size,
            hidden_act=self.encoder.hidden_act,
            layer_norm_eps=self.encoder.layer_norm_eps,
            qkv_bias=self.encoder.qkv_bias,
            image_size=self.encoder.image_size,
            patch_size=self.encoder.patch_size,
            num_channels=self.encoder.num_channels,
        )

    @staticmethod
    def plain_encoder(config: ViTConfig) -> ViTConfig:
        """``config`` as MAE's encoder: no head, no pooler, no dropout of tokens."""
        return config.replace(
            num_labels=0, id2label={}, add_pooling_layer=False, classifier_uses_pooler=False
        )

    def replace(self, **changes: Any) -> MAEConfig:
        return dataclasses.replace(self, **changes)

    @property
    def image_hw(self) -> tuple[int, int]:
        return self.encoder.image_hw

    # ---- config.json (transformers' ViTMAEConfig) ---------------------------------------
    def to_hf_dict(self) -> dict[str, Any]:
        """A config.json dict that ``transformers.ViTMAEConfig`` reads as is."""
        data = self.encoder.to_hf_dict()
        for name in _NOT_IN_MAE_CONFIG:
            data.pop(name, None)
        data.update({name: getattr(self, name) for name in _DECODER_FIELDS})
        data["model_type"] = self.model_type
        data["architectures"] = ["ViTMAEForPreTraining"]
        return data

    @classmethod
    def from_hf_dict(cls, data: dict[str, Any]) -> MAEConfig:
        """Read a ViTMAE config.json dict; ValueError if it is not one."""
        if data.get("model_type") != cls.model_type:
            raise ValueError(f"model_type {data.get('model_type')!r} is not 'vit_mae'")
        encoder = {
            k: v for k, v in data.items() if k not in (*_DECODER_FIELDS, *_NOT_IN_MAE_CONFIG)
        }
        patch = encoder.get("patch_size", 16)
        if isinstance(patch, list):
            if len(set(patch)) != 1:
                raise ValueError(f"non-square patch_size {patch} is not supported")
            encoder["patch_size"] = patch[0]
        encoder.update(model_type="vit", architectures=["ViTModel"], add_pooling_layer=False)
        defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.name != "encoder"}
        decoder = {name: data.get(name, defaults[name]) for name in _DECODER_FIELDS}
        return cls(encoder=ViTConfig.from_hf_dict(encoder), **decoder)


def decoder_defaults(width: int) -> dict[str, int]:
    """Heads and MLP width for a decoder of ``width``: 32-wide heads and a 4x MLP, as the paper's."""
    return {
        "decoder_hidden_size": width,
        "decoder_num_attention_heads": max(1, width // 32),
        "decoder_intermediate_size": 4 * width,
    }


@dataclass
class MAEOutput:
    """One pre-training forward pass. ``logits`` are the predicted pixels of every patch."""

    loss: torch.Tensor
    logits: torch.Tensor  # (B, N, patch*patch*channels), patch order as ``patchify``
    mask: torch.Tensor  # (B, N): 1 = dropped (reconstructed), 0 = seen by the encoder
    ids_restore: torch.Tensor  # (B, N): undoes the shuffle
    latent: torch.Tensor  # (B, 1 + kept, dim): encoder output, [CLS] first


class MAE(nn.Module):
    """Encoder-with-masking plus light decoder. ``encoder`` is a headless ``ViT``."""

    def __init__(self, config: MAEConfig, encoder: ViT | None = None) -> None:
        super().__init__()
        self.config = config
        if encoder is None:
            encoder = ViT(MAEConfig.plain_encoder(config.encoder))
        if encoder.config.num_labels or encoder.pooler is not None:
            raise ValueError("the MAE encoder must be headless and without a pooler")
        self.encoder = encoder
        # MAE's positions are fixed tables, not learned (the encoder's may come from a checkpoint).
        self.encoder.pos_embed.requires_grad_(False)
        decoder = config.decoder_config()
        width = decoder.hidden_size
        self.decoder_embed = nn.Linear(config.encoder.hidden_size, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, config.encoder.num_patches + 1, width), requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            Block(decoder) for _ in range(decoder.num_hidden_layers)
        )
        self.decoder_norm = nn.LayerNorm(width, eps=decoder.layer_norm_eps)
        self.decoder_pred = nn.Linear(width, config.patch_pixels)

    # ---- initialisation -----------------------------------------------------------------
    def init_weights(self, encoder_too: bool = True) -> None:
        """facebookresearch/mae's initialisation: xavier-uniform linear layers (the patch
        projection too, as a linear layer), zero biases, N(0, 0.02) [CLS] and mask tokens, and
        the fixed sin-cos position tables. ``encoder_too=False`` keeps a loaded encoder."""
        modules = [*self.decoder_modules()]
        if encoder_too:
            modules.append(self.encoder)
            weight = self.encoder.patch_embed.proj.weight
            with torch.no_grad():
                nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
            assert self.encoder.cls_token is not None  # an MAE encoder always has [CLS]
            nn.init.normal_(self.encoder.cls_token, std=0.02)
            with torch.no_grad():
                self.encoder.pos_embed.copy_(self._table(self.config.encoder.hidden_size))
        for root in modules:
            for module in root.modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_uniform_(module.weight)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                elif isinstance(module, nn.LayerNorm):
                    nn.init.ones_(module.weight)
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.mask_token, std=0.02)
        with torch.no_grad():
            self.decoder_pos_embed.copy_(self._table(self.config.decoder_hidden_size))

    def _table(self, width: int) -> torch.Tensor:
        return sincos_2d_pos_embed(self.config.encoder.grid_size[0], width)

    def decoder_modules(self) -> list[nn.Module]:
        return [self.decoder_embed, *self.decoder_blocks, self.decoder_norm, self.decoder_pred]

    # ---- patches ------------------------------------------------------------------------
    def patchify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, p*p*C), each patch's pixels row by row, channels last."""
        patch = self.config.encoder.patch_size
        batch, channels, height, width = pixel_values.shape
        rows, cols = height // patch, width // patch
        patches = pixel_values.reshape(batch, channels, rows, patch, cols, patch)
        return patches.permute(0, 2, 4, 3, 5, 1).reshape(batch, rows * cols, patch**2 * channels)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """The inverse of ``patchify`` for the model's square image."""
        patch = self.config.encoder.patch_size
        channels = self.config.encoder.num_channels
        side = self.config.encoder.grid_size[0]
        batch = patches.shape[0]
        grid = patches.reshape(batch, side, side, patch, patch, channels)
        return grid.permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, side * patch, side * patch)

    # ---- masking ------------------------------------------------------------------------
    def random_masking(
        self, tokens: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(kept tokens, mask, ids_restore): the ``keep_count`` tokens with the smallest noise.

        ``noise`` (B, N) defaults to uniform random; giving it makes the mask reproducible
        (transformers' ``noise`` argument). Mask: 1 where a patch was dropped.
        """
        batch, length, dim = tokens.shape
        keep = self.config.keep_count
        if noise is None:
            noise = torch.rand(batch, length, device=tokens.device)
        ids_shuffle = torch.argsort(noise, dim=1).to(tokens.device)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :keep]
        kept = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
        mask = torch.ones(batch, length, device=tokens.device)
        mask[:, :keep] = 0
        return kept, torch.gather(mask, 1, ids_restore), ids_restore

    # ---- forward ------------------------------------------------------------------------
    def forward_encoder(
        self, pixel_values: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(latent (B, 1 + kept, dim), mask, ids_restore)."""
        encoder = self.encoder
        expected = self.config.encoder.image_hw
        if tuple(pixel_values.shape[-2:]) != expected:
            raise ValueError(
                f"MAE input is {tuple(pixel_values.shape[-2:])}, the model's image size is {expected}"
            )
        pos = encoder.pos_embed
        assert encoder.cls_token is not None  # an MAE encoder always has [CLS]
        patches = encoder.patch_embed(pixel_values) + pos[:, 1:]
        kept, mask, ids_restore = self.random_masking(patches, noise)
        cls = (encoder.cls_token + pos[:, :1]).expand(kept.shape[0], -1, -1)
        x = encoder.pos_drop(torch.cat([cls, kept], dim=1))
        for block in encoder.blocks:
            x, _ = block(x)
        return encoder.norm(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predicted pixels of every patch, (B, N, p*p*C), in the original patch order."""
        x = self.decoder_embed(latent)
        batch, seen, width = x.shape
        masked = self.mask_token.expand(batch, ids_restore.shape[1] + 1 - seen, -1)
        shuffled = torch.cat([x[:, 1:], masked], dim=1)
        patches = torch.gather(shuffled, 1, ids_restore.unsqueeze(-1).expand(-1, -1, width))
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x, _ = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def target_patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """What the decoder learns to predict: the patches, per-patch normalised under
        ``norm_pix_loss`` (mean 0, unbiased variance 1, eps 1e-6 as MAE)."""
        target = self.patchify(pixel_values)
        if self.config.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        return target

    def reconstruction_loss(
        self, pixel_values: torch.Tensor, predicted: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Mean squared error per patch, averaged over the dropped patches only."""
        per_patch = ((predicted - self.target_patches(pixel_values)) ** 2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, pixel_values: torch.Tensor, noise: torch.Tensor | None = None) -> MAEOutput:
        latent, mask, ids_restore = self.forward_encoder(pixel_values, noise)
        predicted = self.forward_decoder(latent, ids_restore)
        loss = self.reconstruction_loss(pixel_values, predicted, mask)
        return MAEOutput(loss, predicted, mask, ids_restore, latent)

    def reconstruct(self, pixel_values: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
        """Predicted patches as an image in the input's pixel scale: under ``norm_pix_loss`` the
        prediction is un-normalised with each patch's own mean and spread (MAE's visualisation)."""
        if self.config.norm_pix_loss:
            target = self.patchify(pixel_values)
            mean = target.mean(dim=-1, keepdim=True)
            std = (target.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5
            predicted = predicted * std + mean
        return self.unpatchify(predicted)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_mae(config: MAEConfig, encoder: ViT | None = None) -> MAE:
    """A new MAE, initialised as facebookresearch/mae does; a given ``encoder`` keeps its weights
    (its position embeddings are frozen, as MAE's are)."""
    model = MAE(config, encoder)
    model.init_weights(encoder_too=encoder is None)
    return model
