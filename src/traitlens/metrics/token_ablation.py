"""Agreement with token ablation (metrics.md §1.5): correlation of a method's raw patch scores with TAM's, the
CDAM v1 "correctness" proxy."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from traitlens.metrics._registry import MetricResult, knob_record, register_aggregator, register_metric
from traitlens.metrics.stats import pearson, spearman

__all__ = ["tam_agreement"]


def _pooled_pairs(result: MetricResult) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (method score, TAM score) pair of the run, without the NaN ones (padded or undefined targets)."""
    a, b = result.extras["scores"].flatten(), result.extras["tam"].flatten()
    keep = ~(a.isnan() | b.isnan())
    return a[keep], b[keep]


@register_aggregator("pooled_pearson")
def _pooled_pearson(result: MetricResult) -> float:
    return float(pearson(*_pooled_pairs(result), dim=0))


@register_aggregator("pooled_spearman")
def _pooled_spearman(result: MetricResult) -> float:
    return float(spearman(*_pooled_pairs(result)))


@register_metric("tam_agreement", category="faithfulness", direction="higher", needs=["model"],
                 cost="P+1 forwards per image (TAM), all K targets free", spec="metrics.md §1.5",
                 summary="Pearson r between the method's raw patch scores and token-ablation (TAM) scores")
def tam_agreement(
    model: nn.Module,
    images: torch.Tensor,
    exp: Any,
    *,
    mode: str = "pooled",
    correlation: str = "pearson",
    internal_batch_size: int | str | None = "auto",
) -> MetricResult:
    """Agreement with token ablation, the CDAM v1 "correctness" proxy (metrics.md §1.5). ↑.

    r between `exp.patch_maps` and TAM scores (posthoc.md §10) of the same targets, pooled over all tokens of
    all images (`mode='pooled'`, the reference: the dataset aggregate pools) or averaged per image ('per_image').
    Per-sample values are always the per-image r.
    """
    from traitlens.explain import explain

    tam = explain(model, images, method="tam", target=exp.targets, internal_batch_size=internal_batch_size)
    a = exp.patch_maps.flatten(2).double()
    b = tam.patch_maps.flatten(2).double().to(a.device)
    if correlation == "pearson":
        per_image = pearson(a, b)
    elif correlation == "spearman":
        per_image = spearman(a, b)
    else:
        raise ValueError(f"unknown correlation '{correlation}'; choose 'pearson' or 'spearman'")
    if mode not in ("pooled", "per_image"):
        raise ValueError(f"unknown mode '{mode}'; choose 'pooled' or 'per_image'")
    aggregate = "mean" if mode == "per_image" else f"pooled_{correlation}"
    knobs = knob_record(spec="metrics.md §1.5", mode=mode, correlation=correlation, level="patch_maps (raw)")
    return MetricResult("tam_agreement", per_image, "higher", knobs, extras={"scores": a, "tam": b},
                        aggregate=aggregate)
