"""Removal orders (metrics.md §0 "Ranking"): the rank of every location under MoRF / LeRF with the tie rule,
for pixels, patches or r×r regions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from traitlens.metrics.inputs import batch_indices, image_generator

__all__ = ["TIE_BREAKS", "location_ranks", "pixel_ranks", "region_ids"]

TIE_BREAKS = ("index", "random")


def location_ranks(
    saliency: torch.Tensor,
    order: str = "morf",
    tie_break: str = "index",
    seed: int = 0,
    indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rank of every location in the removal order (0 = removed first), [..., n] → [..., n] long.

    MoRF = a stable sort by (−s, flat index), LeRF = a stable sort by (+s, flat index) (metrics.md §0).
    `tie_break='random'` applies a seeded per-image permutation (seed, dataset index) before the stable sort.
    """
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' or 'lerf', got {order!r}")
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"unknown tie_break '{tie_break}'; choose from {TIE_BREAKS}")
    key = torch.nan_to_num(saliency.detach().double(), nan=-math.inf)
    key = -key if order == "morf" else key
    n = key.shape[-1]
    if tie_break == "index":
        removal = torch.sort(key, dim=-1, stable=True).indices
    else:
        lead = key.shape[:-1]
        b = lead[0] if lead else 1
        ids = batch_indices(indices, b)
        perms = torch.stack([torch.randperm(n, generator=image_generator(seed, i)) for i in ids]).to(key.device)
        perm = perms.view(b, *([1] * (len(lead) - 1)), n).expand(*lead, n) if lead else perms[0]
        srt = torch.sort(key.gather(-1, perm), dim=-1, stable=True).indices
        removal = perm.gather(-1, srt)
    ranks = torch.empty_like(removal)
    ranks.scatter_(-1, removal, torch.arange(n, device=key.device).expand_as(removal).contiguous())
    return ranks


def region_ids(h: int, w: int, r: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, int]:
    """Region id [H,W] of non-overlapping r×r regions in row-major order (edge regions may be smaller)."""
    rows = torch.arange(h, device=device) // r
    cols = torch.arange(w, device=device) // r
    n_cols = math.ceil(w / r)
    return rows[:, None] * n_cols + cols[None, :], math.ceil(h / r) * n_cols


def pixel_ranks(
    maps: torch.Tensor,
    unit: str | int = "pixel",
    order: str = "morf",
    tie_break: str = "index",
    seed: int = 0,
    indices: torch.Tensor | None = None,
    patch_maps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Per-pixel rank of its location [B,K,H,W] and the number of locations.

    unit: 'pixel' (rank pixels), 'patch' (rank `patch_maps`, one patch per location) or an int r (rank r×r regions by
    their summed relevance, Samek et al.). A location is removed in all channels at once.
    """
    B, K, H, W = maps.shape
    if unit == "pixel" or unit == 1:
        return location_ranks(maps.reshape(B, K, H * W), order, tie_break, seed, indices).view(B, K, H, W), H * W
    if unit == "patch":
        if patch_maps is None:
            raise ValueError("unit='patch' needs patch maps (pass an Explanation)")
        g_h, g_w = patch_maps.shape[-2:]
        r = location_ranks(patch_maps.reshape(B, K, g_h * g_w), order, tie_break, seed, indices)
        r = r.view(B, K, g_h, g_w).double()
        if H % g_h == 0 and W % g_w == 0:
            up = r.repeat_interleave(H // g_h, -2).repeat_interleave(W // g_w, -1)
        else:
            up = F.interpolate(r.view(B * K, 1, g_h, g_w), size=(H, W), mode="nearest").view(B, K, H, W)
        return up.long(), g_h * g_w
    if isinstance(unit, int) and unit > 1:
        ids, n = region_ids(H, W, unit, maps.device)
        sums = torch.zeros(B, K, n, dtype=torch.float64, device=maps.device)
        sums.scatter_add_(-1, ids.view(1, 1, -1).expand(B, K, -1), maps.reshape(B, K, -1).double())
        r = location_ranks(sums, order, tie_break, seed, indices)
        return r.gather(-1, ids.view(1, 1, -1).expand(B, K, -1)).view(B, K, H, W), n
    raise ValueError(f"unknown unit {unit!r}; choose 'pixel', 'patch' or a region size r > 1")
