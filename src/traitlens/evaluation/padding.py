"""Padded target slots of multi-label evaluation: images with fewer present classes than the batch's widest image
get padded slots, which are NaN in `values`, marked in `extras["padded"]` and not counted as undefined."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch

from traitlens.metrics import MetricResult

__all__ = ["concat_results", "mark_padding", "n_padded"]


def _fill(t: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """`t` [B,K,...] with padded slots set to NaN (float), False (bool) or −1 (ids)."""
    if t.dim() < 2 or t.shape[:2] != pad.shape:
        return t
    m = pad.view(*pad.shape, *([1] * (t.dim() - 2)))
    if t.dtype == torch.bool:
        return t & ~m
    return t.masked_fill(m, math.nan if t.is_floating_point() else -1)


def mark_padding(r: MetricResult, pad: torch.Tensor | None) -> MetricResult:
    """Padded target slots become NaN samples that aggregates skip; `extras['padded']` keeps them apart from
    undefined samples. Outputs without one value per target (e.g. [B,1] summaries) are left as they are."""
    if pad is None or r.values.shape != pad.shape:
        return r
    pad = pad.cpu()
    extras = {k: _fill(v, pad) for k, v in r.extras.items()}
    extras["padded"] = pad.clone()
    return replace(r, values=_fill(r.values, pad), curves=None if r.curves is None else _fill(r.curves, pad),
                   flagged=None if r.flagged is None else _fill(r.flagged, pad), extras=extras)


def _widen(r: MetricResult, K: int) -> MetricResult:
    """`r` with its target axis padded to K slots (batches of multi-label data differ in K)."""
    B, k = r.values.shape
    if k == K:
        return r

    def grow(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, t.new_zeros((B, K - k, *t.shape[2:]))], 1)

    pad = grow(r.extras.get("padded", torch.zeros(B, k, dtype=torch.bool)))
    pad[:, k:] = True
    wide = replace(r, values=grow(r.values), curves=None if r.curves is None else grow(r.curves),
                   flagged=None if r.flagged is None else grow(r.flagged),
                   extras={n: grow(v) for n, v in r.extras.items() if n != "padded"})
    return mark_padding(wide, pad)


def concat_results(results: Sequence[MetricResult]) -> MetricResult:
    """`MetricResult.concat` that first pads every result to the widest target axis."""
    K = max(r.values.shape[1] for r in results)
    wide = [_widen(r, K) for r in results]
    if any("padded" in r.extras for r in wide):
        wide = [r if "padded" in r.extras else
                replace(r, extras={**r.extras, "padded": torch.zeros(r.values.shape, dtype=torch.bool)})
                for r in wide]
    return MetricResult.concat(wide)


def n_padded(r: MetricResult) -> int:
    """How many samples of `r` are padded slots."""
    pad = r.extras.get("padded")
    return 0 if pad is None else int(pad.sum())
