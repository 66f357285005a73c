"""DETR's 2-D sine position encoding (PositionEmbeddingSine), shared by INTR and SCOUTER (models.md §2.1)."""

from __future__ import annotations

import math

import torch

__all__ = ["sine_position_encoding"]


def sine_position_encoding(mask: torch.Tensor, dim: int, temperature: float = 10000.0,
                           scale: float = 2 * math.pi) -> torch.Tensor:
    """2-D sine encoding over cumulative sums of the valid cells, normalised to (0, 2π] (models.md §2.1 step 3).

    Args:
        mask: bool [B,h,w], True on **padded** cells (DETR convention).
        dim: d, the output channels; d/2 per axis (y first, then x), must be even.

    Returns:
        [B,d,h,w]. Works for any (h, w); appending padded cells leaves the valid cells' encoding unchanged.
    """
    if dim % 2:
        raise ValueError(f"the sine position encoding needs an even dim, got {dim}")
    feats = dim // 2
    not_mask = (~mask).to(torch.float32)
    y = not_mask.cumsum(1)
    x = not_mask.cumsum(2)
    eps = 1e-6
    y = y / (y[:, -1:, :] + eps) * scale
    x = x / (x[:, :, -1:] + eps) * scale
    dim_t = torch.arange(feats, dtype=torch.float32, device=mask.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / feats)
    pos_x = x[..., None] / dim_t
    pos_y = y[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)

