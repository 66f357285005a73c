"""Upsampling and per-map normalisation (posthoc.md §0 "Outputs")."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["NORMALIZATIONS", "UPSAMPLINGS", "normalize_maps", "upsample_maps"]

UPSAMPLINGS = ("nearest", "bilinear")
NORMALIZATIONS = ("none", "minmax", "maxabs")


def upsample_maps(patch_maps: torch.Tensor, size: tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    """[..., g_h, g_w] → [..., H, W]; 'nearest' makes each patch a constant block."""
    if mode not in UPSAMPLINGS:
        raise ValueError(f"unknown upsample '{mode}'; choose from {UPSAMPLINGS}")
    lead = patch_maps.shape[:-2]
    g_h, g_w = patch_maps.shape[-2:]
    H, W = size
    flat = patch_maps.reshape(-1, 1, g_h, g_w)
    if mode == "nearest" and H % g_h == 0 and W % g_w == 0:
        out = flat.repeat_interleave(H // g_h, dim=-2).repeat_interleave(W // g_w, dim=-1)
    elif mode == "nearest":
        out = F.interpolate(flat, size=(H, W), mode="nearest")
    else:
        out = F.interpolate(flat, size=(H, W), mode="bilinear", align_corners=False, antialias=False)
    return out.reshape(*lead, H, W)


def normalize_maps(maps: torch.Tensor, mode: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise each map [..., H, W] on its own; returns (maps, degenerate [...]).

    'minmax' → (m−min)/(max−min); 'maxabs' → m/max|m| (keeps the sign). A constant map (or all-zero for
    'maxabs') becomes zeros and is flagged degenerate, where the references would give NaN.
    """
    if mode not in NORMALIZATIONS:
        raise ValueError(f"unknown normalize '{mode}'; choose from {NORMALIZATIONS}")
    flat = maps.flatten(-2)
    lo, hi = flat.min(-1).values, flat.max(-1).values
    if mode == "none":
        return maps, hi == lo
    if mode == "minmax":
        span = hi - lo
        degenerate = span <= 0
        out = (flat - lo.unsqueeze(-1)) / torch.where(degenerate, torch.ones_like(span), span).unsqueeze(-1)
    else:
        scale = flat.abs().max(-1).values
        degenerate = scale <= 0
        out = flat / torch.where(degenerate, torch.ones_like(scale), scale).unsqueeze(-1)
    out = torch.where(degenerate.unsqueeze(-1), torch.zeros_like(out), out)
    return out.view_as(maps), degenerate
