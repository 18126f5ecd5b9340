"""Google's original ViT release files (.npz, vit_jax naming), e.g. ``ViT-B_16.npz``.

vit_jax (Flax) stores:

    embedding/{kernel (p, p, C, D) HWIO, bias}
    cls (1, 1, D)
    Transformer/posembed_input/pos_embedding (1, 1 + rows*cols, D)
    Transformer/encoderblock_N/LayerNorm_0, LayerNorm_2                   {scale, bias}
    Transformer/encoderblock_N/MultiHeadDotProductAttention_1/{query,key,value}
        kernel (D, heads, head_dim), bias (heads, head_dim)
    Transformer/encoderblock_N/MultiHeadDotProductAttention_1/out
        kernel (heads, head_dim, D), bias (D,)
    Transformer/encoderblock_N/MlpBlock_3/{Dense_0, Dense_1}             kernel (in, out), bias
    Transformer/encoder_norm                                               {scale, bias}
    pre_logits/{kernel, bias}       only in the in21k pre-training checkpoints (dense + tanh)
    head/{kernel (D, classes), bias}

Training checkpoints put all of it under ``opt/target/`` (next to optimiser state, ignored here).
Flax Dense kernels are (in, out): transposed to PyTorch's (out, in). Unlike timm, the head count
is read from the attention kernels. LayerNorm eps is Flax's 1e-6. The MLP uses exact GELU as
timm and transformers do when they run these files (vit_jax itself uses Flax's tanh-approximate
``nn.gelu``; the difference is far below the checkpoints' float noise at inference but is not 0).

Loaded at another resolution, the position embeddings are resampled like every other format's
(bicubic, antialiased: timm's rule for its state dicts). timm's own .npz loader uses bilinear
without antialiasing there, and vit_jax used scipy's order-1 zoom, so fine-tuning results at a new
resolution can differ slightly between the three; at the checkpoint's own size all agree.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitkit.checkpoints.key_mapping import KeyReader, build_vit
from vitkit.checkpoints.overrides import apply_overrides
from vitkit.errors import CheckpointError
from vitkit.models.config import ImageSize, ViTConfig
from vitkit.models.vit import ViT

NPZ_LAYER_NORM_EPS = 1e-6
TRAINING_PREFIX = "opt/target/"
_BLOCK = "Transformer/encoderblock_{}/"
_ATTENTION = "MultiHeadDotProductAttention_1/"


def read_npz(path: Path) -> dict[str, torch.Tensor]:
    """The file's arrays as float32 tensors, without the ``opt/target/`` prefix if present."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise CheckpointError(f"{path}: not a readable .npz file ({error})") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise CheckpointError(f"{path}: holds a single array, not an .npz archive of named weights")
    with archive:
        try:
            arrays = {name: archive[name] for name in archive.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
            raise CheckpointError(f"{path}: not a readable .npz file ({error})") from error
    if TRAINING_PREFIX + "embedding/kernel" in arrays:
        start = len(TRAINING_PREFIX)
        arrays = {name[start:]: a for name, a in arrays.items() if name.startswith(TRAINING_PREFIX)}
    if "embedding/kernel" not in arrays:
        sample = ", ".join(sorted(arrays)[:5]) or "no arrays"
        raise CheckpointError(
            f"{path}: not a vit_jax ViT checkpoint (no embedding/kernel or "
            f"{TRAINING_PREFIX}embedding/kernel; first keys: {sample})"
        )
    return {name: _as_tensor(array, name, path) for name, array in arrays.items()}


def _as_tensor(array: np.ndarray, name: str, path: Path) -> torch.Tensor:
    if array.dtype.kind not in "fiub":
        raise CheckpointError(
            f"{path}: array {name} has dtype {array.dtype}, not a number type vitkit reads "
            "(bfloat16 checkpoints must be converted to float32 first)"
        )
    return torch.from_numpy(np.asarray(array, dtype=np.float32))


def load_npz(
    path: Path,
    image_size: ImageSize | None = None,
    device: str | torch.device = "cpu",
    *,
    overrides: Mapping[str, Any] | None = None,
) -> ViT:
    arrays = read_npz(path)
    config = apply_overrides(infer_config(arrays, path), overrides, path)
    reader = npz_reader(arrays, config)
    return build_vit(config, reader, path, image_size, device)


def infer_config(arrays: dict[str, torch.Tensor], path: Path) -> ViTConfig:
    patch_h, patch_w, channels, width = arrays["embedding/kernel"].shape
    if patch_h != patch_w:
        raise CheckpointError(f"{path}: non-square patches {patch_h}x{patch_w} are not supported")
    depth = 0
    while f"{_BLOCK.format(depth)}LayerNorm_0/scale" in arrays:
        depth += 1
    first = _BLOCK.format(0)
    query = arrays.get(f"{first}{_ATTENTION}query/kernel")
    mlp = arrays.get(f"{first}MlpBlock_3/Dense_0/kernel")
    if depth == 0 or query is None or mlp is None:
        raise CheckpointError(f"{path}: no complete {first} found (vit_jax naming expected)")
    positions = arrays["Transformer/posembed_input/pos_embedding"].shape[1] - 1
    side = math.isqrt(positions)
    if side * side != positions:
        raise CheckpointError(f"{path}: {positions} position embeddings are not a square grid")
    head = arrays.get("head/kernel")
    num_labels = head.shape[1] if head is not None else 0
    pre_logits = "pre_logits/kernel" in arrays
    return ViTConfig(
        hidden_size=width,
        num_hidden_layers=depth,
        num_attention_heads=query.shape[1],
        intermediate_size=mlp.shape[1],
        layer_norm_eps=NPZ_LAYER_NORM_EPS,
        image_size=side * patch_h,
        patch_size=patch_h,
        num_channels=channels,
        qkv_bias=f"{first}{_ATTENTION}query/bias" in arrays,
        num_labels=num_labels,
        add_pooling_layer=pre_logits,
        classifier_uses_pooler=pre_logits and num_labels > 0,
    )


def _dense(kernel: torch.Tensor) -> torch.Tensor:
    return kernel.T  # Flax (in, out) -> PyTorch (out, in)


def npz_reader(arrays: dict[str, torch.Tensor], config: ViTConfig) -> KeyReader:
    reader = KeyReader(arrays)
    reader.move("embedding/kernel", "patch_embed.proj.weight", lambda k: k.permute(3, 2, 0, 1))
    reader.move("embedding/bias", "patch_embed.proj.bias")
    reader.move("cls", "cls_token")
    reader.move("Transformer/posembed_input/pos_embedding", "pos_embed")
    _move_norm(reader, "Transformer/encoder_norm/", "norm")
    for index in range(config.num_hidden_layers):
        _move_block(reader, index, config.qkv_bias)
    if config.add_pooling_layer:
        reader.move("pre_logits/kernel", "pooler.dense.weight", _dense)
        reader.move("pre_logits/bias", "pooler.dense.bias")
    if config.num_labels:
        reader.move("head/kernel", "head.weight", _dense)
        reader.move("head/bias", "head.bias")
    return reader


def _move_norm(reader: KeyReader, theirs: str, ours: str) -> None:
    reader.move(f"{theirs}scale", f"{ours}.weight")
    reader.move(f"{theirs}bias", f"{ours}.bias")


def _move_block(reader: KeyReader, index: int, qkv_bias: bool) -> None:
    theirs, ours = _BLOCK.format(index), f"blocks.{index}."
    _move_norm(reader, f"{theirs}LayerNorm_0/", f"{ours}norm1")
    _move_norm(reader, f"{theirs}LayerNorm_2/", f"{ours}norm2")
    attention = theirs + _ATTENTION
    parts = [f"{attention}{part}/" for part in ("query", "key", "value")]
    # (D, heads, head_dim) -> (D, D) -> transposed to (out, in); stacked q, k, v like timm's qkv.
    kernels = [reader.take(part + "kernel") for part in parts]
    if all(k is not None for k in kernels):
        fused = torch.cat([k.flatten(1).T for k in kernels if k is not None])
        reader.put(f"{ours}attn.qkv.weight", fused, f"{attention}{{query,key,value}}/kernel")
    if qkv_bias:
        biases = [reader.take(part + "bias") for part in parts]
        if all(b is not None for b in biases):
            fused = torch.cat([b.reshape(-1) for b in biases if b is not None])
            reader.put(f"{ours}attn.qkv.bias", fused, f"{attention}{{query,key,value}}/bias")
    # out: (heads, head_dim, D) -> (D_in, D_out) -> (out, in)
    reader.move(f"{attention}out/kernel", f"{ours}attn.proj.weight", lambda k: k.flatten(0, 1).T)
    reader.move(f"{attention}out/bias", f"{ours}attn.proj.bias")
    for dense, fc in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
        reader.move(f"{theirs}MlpBlock_3/{dense}/kernel", f"{ours}mlp.{fc}.weight", _dense)
        reader.move(f"{theirs}MlpBlock_3/{dense}/bias", f"{ours}mlp.{fc}.bias")
