"""Resampling learned absolute position embeddings to another patch grid.

The ViT paper (section 3.2) fine-tunes at higher resolution by 2-D interpolating the pre-trained
position embeddings over the patch grid; the [CLS] position is left alone. We use bicubic
interpolation, as timm's ``resample_abs_pos_embed`` and HF's ``interpolate_pos_encoding`` do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
    antialias: bool = True,
) -> torch.Tensor:
    """Resample ``pos_embed`` of shape (1, prefix + rows*cols, dim) to ``new_grid``.

    ``old_grid`` defaults to a square grid. ``antialias=True`` is what timm's
    ``resample_abs_pos_embed`` does at load time; HF's ``interpolate_pos_encoding`` uses plain
    bicubic. The two differ even when enlarging (torch's antialiased bicubic uses another kernel
    coefficient), so each caller picks the one its reference uses.
    """
    num_grid_tokens = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = round(num_grid_tokens**0.5)
        if side * side != num_grid_tokens:
            raise ValueError(
                f"position embedding has {num_grid_tokens} grid tokens, not a square grid: "
                "pass old_grid=(rows, cols)"
            )
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    original_dtype = grid.dtype
    # (1, rows*cols, dim) -> (1, dim, rows, cols), interpolate in fp32 for accuracy.
    grid = grid.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(
        grid, size=tuple(new_grid), mode="bicubic", align_corners=False, antialias=antialias
    )
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(original_dtype)
    return torch.cat([prefix, grid], dim=1)


def sincos_2d_pos_embed(grid_size: int, dim: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings as MAE uses them, (1, [1 +] grid**2, dim).

    The layout is that of facebookresearch/mae ``get_2d_sincos_pos_embed`` (which the published
    checkpoints and transformers' ViTMAE reproduce): per position ``[sin(w*f), cos(w*f), sin(h*f),
    cos(h*f)]`` with frequencies ``f = 1 / 10000**(k / (dim/4))``, rows outer, and a zero vector
    for [CLS]. MAE's code names the column coordinate ``h``; the column block comes first.
    Computed in float64, returned in float32.
    """
    if dim % 4:
        raise ValueError(f"sine-cosine position embeddings need a width divisible by 4, not {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(grid_size, dtype=torch.float64),
        torch.arange(grid_size, dtype=torch.float64),
        indexing="ij",
    )
    by_col = cols.flatten().outer(omega)
    by_row = rows.flatten().outer(omega)
    table = torch.cat([by_col.sin(), by_col.cos(), by_row.sin(), by_row.cos()], dim=1)
    if cls_token:
        table = torch.cat([torch.zeros(1, dim, dtype=torch.float64), table])
    return table.float().unsqueeze(0)
