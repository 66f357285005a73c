"""Localisation targets (metrics.md §0): boxes rasterised to masks, and masks broadcast over the K maps."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["boxes_to_masks", "masks_for"]


def boxes_to_masks(boxes: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Rasterise per-image boxes ([n,4] xyxy, pixel i spans [i, i+1)) to [B,H,W] bool: pixels whose centre lies
    inside (inclusive) any box (metrics.md §0)."""
    H, W = size
    cy = torch.arange(H, dtype=torch.float64) + 0.5
    cx = torch.arange(W, dtype=torch.float64) + 0.5
    out = torch.zeros(len(boxes), H, W, dtype=torch.bool)
    for i, bx in enumerate(boxes):
        bx = torch.as_tensor(bx, dtype=torch.float64).view(-1, 4)
        if bx.numel() == 0:
            continue
        iny = (cy[None, :] >= bx[:, 1:2]) & (cy[None, :] <= bx[:, 3:4])
        inx = (cx[None, :] >= bx[:, 0:1]) & (cx[None, :] <= bx[:, 2:3])
        out[i] = (iny[:, :, None] & inx[:, None, :]).any(0)
    return out


def masks_for(masks: torch.Tensor | None, boxes: Sequence[torch.Tensor] | None, B: int, K: int,
              size: tuple[int, int]) -> torch.Tensor:
    """Localisation targets [B,K,H,W] bool from masks ([B,H,W], [B,1,H,W] or [B,K,H,W]) or rasterised boxes."""
    if masks is None:
        if boxes is None:
            raise ValueError("this metric needs masks or boxes")
        masks = boxes_to_masks(boxes, size)
    masks = masks.bool()
    if masks.dim() == 3:
        masks = masks.unsqueeze(1)
    if masks.shape[-2:] != torch.Size(size):
        raise ValueError(f"mask size {tuple(masks.shape[-2:])} differs from the map size {size}")
    return masks.expand(B, K, *size) if masks.shape[1] == 1 else masks
