"""Statistics of maps and curves: per-map min-max, correlations (Pearson, Spearman with average ranks), SSIM
(metrics.md §5, §6) and the RISE trapezoid AUC (metrics.md §1.1)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "SSIM_SETTINGS",
    "average_ranks",
    "minmax",
    "minmax_ssim",
    "nan_where",
    "pearson",
    "spearman",
    "ssim",
    "trapezoid_auc",
]


def minmax(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-map min-max over the last two dims; returns (normalised, degenerate). Constant maps become 0."""
    flat = maps.flatten(-2)
    lo, hi = flat.min(-1, keepdim=True).values, flat.max(-1, keepdim=True).values
    span = hi - lo
    degenerate = (span <= 0).squeeze(-1)
    out = (flat - lo) / torch.where(span > 0, span, torch.ones_like(span))
    out = torch.where(span > 0, out, torch.zeros_like(out))
    return out.view_as(maps), degenerate


def nan_where(values: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """`values` with NaN where `cond` holds (undefined samples)."""
    return torch.where(cond, torch.full_like(values, math.nan), values)


def trapezoid_auc(curves: torch.Tensor) -> torch.Tensor:
    """RISE AUC on [0,1] with n intervals: (Σ_k p_k − (p_0 + p_n)/2) / n over the last dim (metrics.md §1.1)."""
    n = curves.shape[-1] - 1
    return (curves.sum(-1) - (curves[..., 0] + curves[..., -1]) / 2) / max(n, 1)


def pearson(a: torch.Tensor, b: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Pearson r along `dim`; NaN where either side has zero variance."""
    a = a.double() - a.double().mean(dim, keepdim=True)
    b = b.double() - b.double().mean(dim, keepdim=True)
    den = (a.square().sum(dim) * b.square().sum(dim)).sqrt()
    num = (a * b).sum(dim)
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.full_like(num, math.nan))


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks along the last dim with ties given their average rank (1-based, as scipy's `rankdata`)."""
    n = x.shape[-1]
    srt, order = torch.sort(x.double(), dim=-1, stable=True)
    pos = torch.arange(n, device=x.device).expand_as(srt)
    new_group = torch.ones_like(srt, dtype=torch.bool)
    new_group[..., 1:] = srt[..., 1:] != srt[..., :-1]
    start = torch.where(new_group, pos, torch.zeros_like(pos)).cummax(-1).values
    last = torch.ones_like(new_group)
    last[..., :-1] = new_group[..., 1:]
    end_rev = torch.where(last, pos, torch.full_like(pos, n)).flip(-1).cummin(-1).values.flip(-1)
    avg = (start + end_rev).double() / 2 + 1
    ranks = torch.empty_like(avg)
    ranks.scatter_(-1, order, avg)
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation along the last dim (average ranks for ties); NaN for a constant side."""
    return pearson(average_ranks(a), average_ranks(b))


SSIM_SETTINGS = "7x7 uniform window, sample covariance, K1 0.01, K2 0.03, data_range 1, min-max maps"
"""The SSIM of metrics.md §6 (random logit) and §5 (MPRT), as recorded in the knobs."""


def ssim(a: torch.Tensor, b: torch.Tensor, win: int = 7, k1: float = 0.01, k2: float = 0.03,
         data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of [..., H, W] pairs with a `win`×`win` uniform window, averaged over the valid (un-padded) region.

    This is skimage's `structural_similarity(a, b, win_size=win, data_range=data_range)` with its defaults
    (`gaussian_weights=False`, `use_sample_covariance=True`: (co)variances carry the N/(N−1) factor, N = win²).
    We follow that convention because Quantus' `ssim` (behind `RandomLogit`) calls skimage with its defaults;
    Wang et al.'s original (Gaussian 11×11 weights, population covariance) is not what the §6 reference computes.
    """
    *lead, H, W = a.shape
    if min(H, W) < win:
        raise ValueError(f"SSIM needs maps of at least {win}x{win}, got {H}x{W}; use pixel-level maps")
    x = a.reshape(-1, 1, H, W).double()
    y = b.reshape(-1, 1, H, W).double()
    kern = torch.full((1, 1, win, win), 1.0 / win**2, dtype=torch.float64, device=a.device)

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kern)  # valid region only: skimage crops (win−1)/2 on every side before the mean

    n = win * win
    cov_norm = n / (n - 1)
    ux, uy = filt(x), filt(y)
    vx = cov_norm * (filt(x * x) - ux * ux)
    vy = cov_norm * (filt(y * y) - uy * uy)
    vxy = cov_norm * (filt(x * y) - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return s.mean((-2, -1)).view(*lead)


def minmax_ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM of [..., H, W] map pairs after per-map min-max to [0,1] (`SSIM_SETTINGS`; a constant map becomes 0).

    The one SSIM every map-similarity metric uses (random logit §6, MPRT §5), so they stay comparable."""
    return ssim(minmax(a.double())[0], minmax(b.double())[0])
