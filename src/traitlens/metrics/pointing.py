"""Where the map points (metrics.md §3.1, §3.2, §3.5): the pointing game, the energy-based pointing game and
SCOUTER's area size. No forwards; an empty target mask gives NaN."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from traitlens.metrics._registry import MetricResult, register_aggregator, register_metric
from traitlens.metrics.inputs import explanation_parts
from traitlens.metrics.masks import boxes_to_masks, masks_for
from traitlens.metrics.stats import minmax, nan_where
from traitlens.ops.morphology import dilate

__all__ = ["area_size", "energy_pointing_game", "energy_share", "pointing_game"]


def _targets_or_dummy(targets: torch.Tensor | None, B: int, K: int) -> torch.Tensor:
    return targets.long().cpu() if targets is not None else torch.full((B, K), -1, dtype=torch.long)


# ----------------------------------------------------------------------------- pointing game


@register_aggregator("macro_classes")
def _macro_classes(result: MetricResult) -> float:
    """Per-class mean over (image, target) samples of that class, then the mean over classes (TorchRay 'macro')."""
    v, c = result.values.flatten(), result.extras["classes"].flatten()
    keep = ~torch.isnan(v)
    v, c = v[keep], c[keep]
    if v.numel() == 0:
        return math.nan
    classes = c.unique()
    return float(torch.stack([v[c == k].mean() for k in classes]).mean())


@register_metric("pointing_game", category="localisation", direction="higher", needs=["masks"],
                 cost="no forwards", spec="metrics.md §3.1",
                 summary="Is the map's maximum within tol px of the target mask? (macro mean over classes)")
def pointing_game(
    exp: Any,
    masks: torch.Tensor | None = None,
    boxes: Sequence[torch.Tensor] | None = None,
    *,
    tol: float = 15,
    ties: str = "first",
    aggregate: str = "macro",
    level: str = "pixel",
) -> MetricResult:
    """Pointing game (Zhang et al. 2016; TorchRay) (metrics.md §3.1). ↑.

    The point is the first maximal pixel in row-major order (`torch.argmax`); it is a hit iff some target pixel
    lies at squared distance **strictly** < tol² (tol = 0: the point lies inside the mask). `ties='any'` counts a
    hit if any maximal pixel qualifies (Quantus). The aggregate is the per-class accuracy averaged over classes
    ('macro', TorchRay's default) or pooled ('micro').

    Args:
        exp: `Explanation` or raw map tensor [B,(K,)H,W].
        masks: [B,H,W] or [B,K,H,W] bool targets; or `boxes` (per image [n,4] xyxy).
        tol: tolerance in pixels (TorchRay: 15).
    """
    maps, targets = explanation_parts(exp, level)
    B, K, H, W = maps.shape
    m = masks_for(masks, boxes, B, K, (H, W)).to(maps.device)
    near = dilate(m, tol).flatten(-2)
    flat = maps.flatten(-2)
    if ties == "first":
        hit = near.gather(-1, flat.argmax(-1, keepdim=True)).squeeze(-1)
    elif ties == "any":
        hit = ((flat == flat.max(-1, keepdim=True).values) & near).any(-1)
    else:
        raise ValueError(f"unknown ties '{ties}'; choose 'first' or 'any'")
    if aggregate not in ("macro", "micro"):
        raise ValueError(f"unknown aggregate '{aggregate}'; choose 'macro' or 'micro'")
    values = nan_where(hit.double(), ~m.flatten(-2).any(-1))
    return MetricResult("pointing_game", values, "higher",
                        {"spec": "metrics.md §3.1", "tol": tol, "ties": ties, "aggregate": aggregate, "level": level},
                        extras={"classes": _targets_or_dummy(targets, B, K)},
                        aggregate="macro_classes" if aggregate == "macro" else "mean")


# ----------------------------------------------------------------------------- energy pointing game


def _signed(maps: torch.Tensor, sign: str) -> torch.Tensor:
    if sign == "minmax":
        return minmax(maps.double())[0]
    if sign == "positive":
        return maps.double().clamp_min(0)
    raise ValueError(f"unknown sign '{sign}'; choose 'minmax' or 'positive'")


def energy_share(s: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Σ_{p∈G} s(p) / Σ_p s(p) for non-negative s [...,H,W] and bool G; NaN when Σ s = 0 or G is empty."""
    total = s.flatten(-2).sum(-1)
    inside = (s * region).flatten(-2).sum(-1)
    out = inside / torch.where(total > 0, total, torch.ones_like(total))
    return nan_where(out, (total <= 0) | ~region.flatten(-2).any(-1))


@register_metric("energy_pointing_game", category="localisation", direction="higher", needs=["masks"],
                 cost="no forwards", spec="metrics.md §3.2",
                 summary="Share of the (min-maxed) map's energy inside the target region")
def energy_pointing_game(
    exp: Any,
    masks: torch.Tensor | None = None,
    boxes: Sequence[torch.Tensor] | None = None,
    *,
    sign: str = "minmax",
    region: str = "union",
    level: str = "pixel",
) -> MetricResult:
    """Energy-based pointing game (Score-CAM) (metrics.md §3.2). ↑.

    s ← minmax(s) (`sign='minmax'`, the reference) or max(s, 0) ('positive', for signed maps);
    **EBPG = Σ_{p∈G} s(p) / Σ_p s(p)** with G the union of the target boxes / the mask (`region='union'`) or the
    best single box (`'best_box'`, SCOUTER's "precision"). Σ s = 0 gives NaN. Report beside `area_size`.
    """
    maps, _ = explanation_parts(exp, level)
    B, K, H, W = maps.shape
    s = _signed(maps, sign)
    if region == "union":
        values = energy_share(s, masks_for(masks, boxes, B, K, (H, W)).to(s.device))
    elif region == "best_box":
        if boxes is None:
            raise ValueError("region='best_box' needs boxes")
        values = torch.full((B, K), math.nan, dtype=torch.float64)
        for b, bx in enumerate(boxes):
            bx = torch.as_tensor(bx).view(-1, 4)
            if bx.shape[0]:
                single = boxes_to_masks([box[None] for box in bx], (H, W)).to(s.device)  # [n,H,W]
                shares = energy_share(s[b][:, None], single[None])  # [K,n]
                values[b] = torch.nan_to_num(shares, nan=-math.inf).max(-1).values.cpu()
        values = nan_where(values, torch.isinf(values))
    else:
        raise ValueError(f"unknown region '{region}'; choose 'union' or 'best_box'")
    return MetricResult("energy_pointing_game", values, "higher",
                        {"spec": "metrics.md §3.2", "sign": sign, "region": region, "level": level})


@register_metric("area_size", category="localisation", direction="none", needs=[], cost="no forwards",
                 spec="metrics.md §3.5", summary="Mean of the min-maxed map: the fraction of 'lit' area (report only)")
def area_size(exp: Any, *, level: str = "pixel") -> MetricResult:
    """SCOUTER's area size (metrics.md §3.5): mean of the min-max-normalised map. No direction (smaller = more
    concise); report it beside EBPG and mask overlap. A constant map gives NaN."""
    maps, _ = explanation_parts(exp, level)
    s, degenerate = minmax(maps.double())
    return MetricResult("area_size", nan_where(s.flatten(-2).mean(-1), degenerate), "none",
                        {"spec": "metrics.md §3.5", "level": level})
