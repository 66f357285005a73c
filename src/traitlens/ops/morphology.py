"""Binary morphology on bool masks (pure tensor ops): dilation by a Euclidean disk."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["dilate"]


def dilate(masks: torch.Tensor, tol: float) -> torch.Tensor:
    """Pixels at squared distance strictly < tol² from some pixel of bool `masks` [..., H, W] (tol ≤ 0: the mask
    itself): the pointing game's tolerance (metrics.md §3.1)."""
    if tol <= 0:
        return masks
    r = math.ceil(tol) - 1 if float(tol).is_integer() else math.floor(tol)
    d = torch.arange(-r, r + 1, dtype=torch.float64)
    disk = ((d[:, None] ** 2 + d[None, :] ** 2) < tol**2).double()
    lead, (H, W) = masks.shape[:-2], masks.shape[-2:]
    out = F.conv2d(masks.reshape(-1, 1, H, W).double(), disk.view(1, 1, *disk.shape).to(masks.device), padding=r)
    return (out > 0.5).view(*lead, H, W)
