"""Sparsity and complexity of maps (metrics.md §4): CDAM's near-zero fraction, Gini, entropy complexity and
effective complexity. Computed on `patch_maps` (raw, token grid) by default — pixel-space methods are already
sum-pooled to patches there — or on pixel `maps` with `level='pixel'`. No forwards."""

from __future__ import annotations

import math
from typing import Any

import torch

from traitlens.metrics._registry import MetricResult, register_metric
from traitlens.metrics.inputs import explanation_parts

__all__ = ["complexity", "effective_complexity", "gini", "near_zero_fraction"]


def _flat(exp: Any, level: str) -> torch.Tensor:
    maps, _ = explanation_parts(exp, level)
    return maps.flatten(-2).double()


@register_metric("sparsity", category="complexity", direction="higher", needs=[], cost="no forwards",
                 spec="metrics.md §4", summary="CDAM near-zero fraction: share of tokens with |s| < 0.05·max s")
def near_zero_fraction(exp: Any, *, ratio: float = 0.05, ref: str = "max", level: str = "patch") -> MetricResult:
    """CDAM's near-zero fraction (metrics.md §4; `lenbrocki/CDAM`). ↑ = sparser.

    **frac = #{i : |s_i| < ratio·max_i s_i} / P** on the raw signed scores. `ref='max'` is the reference (the max
    of s, not of |s|): when max s ≤ 0 no token qualifies and the map is flagged (`flagged`), not NaN.
    `ref='maxabs'` is the sign-safe option.
    """
    s = _flat(exp, level)
    if ref == "max":
        top = s.max(-1, keepdim=True).values
    elif ref == "maxabs":
        top = s.abs().max(-1, keepdim=True).values
    else:
        raise ValueError(f"unknown ref '{ref}'; choose 'max' or 'maxabs'")
    values = (s.abs() < ratio * top).double().mean(-1)
    return MetricResult("sparsity", values, "higher",
                        {"spec": "metrics.md §4", "ratio": ratio, "ref": ref, "level": level},
                        flagged=(top <= 0).squeeze(-1).cpu())


@register_metric("gini", category="complexity", direction="higher", needs=[], cost="no forwards",
                 spec="metrics.md §4", summary="Gini index of |s| (Chalasani et al.; Quantus Sparseness)")
def gini(exp: Any, *, level: str = "patch") -> MetricResult:
    """Gini sparseness (metrics.md §4). ↑ = sparser; in [0, (D−1)/D]; a zero map gives NaN.

    v = |s| sorted ascending (D values): **G = Σ_{i=1..D} (2i − D − 1)·v_i / (D·Σ v)**.
    """
    v = torch.sort(_flat(exp, level).abs(), -1).values
    D = v.shape[-1]
    i = torch.arange(1, D + 1, dtype=torch.float64, device=v.device)
    total = v.sum(-1)
    g = ((2 * i - D - 1) * v).sum(-1) / (D * torch.where(total > 0, total, torch.ones_like(total)))
    return MetricResult("gini", torch.where(total > 0, g, torch.full_like(g, math.nan)), "higher",
                        {"spec": "metrics.md §4", "level": level})


@register_metric("complexity", category="complexity", direction="lower", needs=[], cost="no forwards",
                 spec="metrics.md §4", summary="Entropy of the normalised |s| distribution (Bhatt et al.)")
def complexity(exp: Any, *, level: str = "patch") -> MetricResult:
    """Entropy complexity (metrics.md §4; Quantus `Complexity`). ↓; in [0, ln D]; a zero map gives NaN.

    P_i = |s_i| / Σ_j |s_j|, **H = −Σ P_i ln P_i** with 0 ln 0 = 0.
    """
    a = _flat(exp, level).abs()
    total = a.sum(-1, keepdim=True)
    p = a / torch.where(total > 0, total, torch.ones_like(total))
    h = -(torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros_like(p))).sum(-1)
    return MetricResult("complexity", torch.where(total.squeeze(-1) > 0, h, torch.full_like(h, math.nan)), "lower",
                        {"spec": "metrics.md §4", "level": level})


@register_metric("effective_complexity", category="complexity", direction="lower", needs=[], cost="no forwards",
                 spec="metrics.md §4", summary="Number of entries with |s| above eps")
def effective_complexity(exp: Any, *, eps: float = 1e-5, level: str = "patch") -> MetricResult:
    """Effective complexity (metrics.md §4): **#{i : |s_i| > eps}**. ↓."""
    s = _flat(exp, level)
    return MetricResult("effective_complexity", (s.abs() > eps).double().sum(-1), "lower",
                        {"spec": "metrics.md §4", "eps": eps, "level": level})
