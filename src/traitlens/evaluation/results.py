"""What `evaluate` returns: `EvalResults`, its summary rows with bootstrap confidence intervals over images, and
the derived insertion − deletion metric (api.md `tl.evaluate`; metrics.md)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from traitlens.evaluation.padding import n_padded
from traitlens.metrics import MetricResult, get_metric

__all__ = ["SUMMARY_FIELDS", "EvalResults", "bootstrap_ci", "derive_metrics", "sort_results", "summary_row"]

SUMMARY_FIELDS = ["method", "metric", "category", "direction", "value", "ci_low", "ci_high", "n", "n_nan",
                  "n_flagged"]
"""The keys of a summary row (the columns of results.csv)."""


@dataclass
class EvalResults:
    """What `evaluate` measured.

    Attributes:
        rows: one summary dict per (method, metric): method, metric, category, direction, value, ci_low,
            ci_high, n, n_nan, n_flagged.
        results: (method, metric label) → the concatenated `MetricResult` over all images (per-sample values,
            curves, knobs).
        indices: dataset indices of the evaluated images, in result order.
        timing: method → explanation seconds per image.
        skipped: "method" or "method/metric" → why it was not computed.
        out: the output folder, when written.
        figures: name → PNG bytes (curves, bars).
        config: what was run (methods, metrics, target rule and LSC rule, options), as written to results.json.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    results: dict[tuple[str, str], MetricResult] = field(default_factory=dict)
    indices: torch.Tensor | None = None
    timing: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    out: Path | None = None
    figures: dict[str, bytes] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(m for m, _ in self.results))

    @property
    def metrics(self) -> list[str]:
        return list(dict.fromkeys(k for _, k in self.results))

    def value(self, method: str, metric: str) -> float:
        """The aggregate of `metric` for `method` (NaN when absent)."""
        r = self.results.get((method, metric))
        return math.nan if r is None else r.value

    def row(self, method: str, metric: str) -> dict[str, Any] | None:
        return next((r for r in self.rows if r["method"] == method and r["metric"] == metric), None)

    def to_markdown(self, ci: bool = True) -> str:
        """Methods × metrics, with ↑/↓ and the bootstrap CI."""
        metrics = self.metrics
        arrows = {"higher": " ↑", "lower": " ↓", "none": ""}
        head = ["method", *(m + arrows[self.results[(self.methods[0], m)].direction] if (self.methods[0], m)
                             in self.results else m for m in metrics), "s/img"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for method in self.methods:
            cells = [method]
            for m in metrics:
                row = self.row(method, m)
                if row is None or row["value"] is None or math.isnan(row["value"]):
                    cells.append("–")
                elif ci and row.get("ci_low") is not None and not math.isnan(row["ci_low"]):
                    cells.append(f"{row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]")
                else:
                    cells.append(f"{row['value']:.3f}")
            t = self.timing.get(method)
            cells.append("–" if t is None else f"{t:.4f}")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def bootstrap_ci(result: MetricResult, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the aggregate, resampling images with replacement (NaN samples stay excluded).

    The default 'mean' aggregate is resampled vectorised; dataset-level aggregates (PxAP, MaxBoxAccV2, macro
    pointing game, pooled r) are recomputed on min(n_boot, 200) resamples.
    """
    N = result.values.shape[0]
    if n_boot <= 0 or N < 2:
        return math.nan, math.nan
    g = torch.Generator().manual_seed(seed)
    q = torch.tensor([(1 - level) / 2, 1 - (1 - level) / 2], dtype=torch.float64)
    if result.aggregate == "mean":
        v = result.values
        finite = ~torch.isnan(v)
        sums = torch.where(finite, v, torch.zeros_like(v)).sum(1)
        counts = finite.sum(1).double()
        idx = torch.randint(0, N, (n_boot, N), generator=g)
        stats = sums[idx].sum(1) / counts[idx].sum(1)
    else:
        idx = torch.randint(0, N, (min(n_boot, 200), N), generator=g)
        stats = torch.tensor([result.select(i).value for i in idx], dtype=torch.float64)
    stats = stats[~torch.isnan(stats)]
    if stats.numel() == 0:
        return math.nan, math.nan
    lo, hi = torch.quantile(stats, q).tolist()
    return lo, hi


def summary_row(method: str, label: str, r: MetricResult, n_boot: int, seed: int) -> dict[str, Any]:
    """The `SUMMARY_FIELDS` of one (method, metric label); padded slots do not count as NaN samples."""
    lo, hi = bootstrap_ci(r, n_boot, seed)
    name = label.partition("@")[0]
    try:
        category = get_metric(name).category
    except ValueError:
        category = "derived"
    return {"method": method, "metric": label, "category": category, "direction": r.direction, "value": r.value,
            "ci_low": lo, "ci_high": hi, "n": r.n, "n_nan": r.n_nan - n_padded(r),
            "n_flagged": 0 if r.flagged is None else int(r.flagged.sum())}


def derive_metrics(merged: dict[tuple[str, str], MetricResult]) -> None:
    """Add insertion − deletion (↑, metrics.md §1.1) per sample, when both were computed on the same targets."""
    for method in list(dict.fromkeys(m for m, _ in merged)):
        d, i = merged.get((method, "deletion")), merged.get((method, "insertion"))
        if d is not None and i is not None and d.values.shape == i.values.shape:
            merged[(method, "insertion_minus_deletion")] = MetricResult(
                "insertion_minus_deletion", i.values - d.values, "higher",
                {"spec": "metrics.md §1.1", "derived": "insertion − deletion", "deletion": d.knobs,
                 "insertion": i.knobs},
                extras={k: v for k, v in i.extras.items() if k == "padded"})


def sort_results(merged: Mapping[tuple[str, str], MetricResult], methods: list[str],
                 labels: list[str]) -> dict[tuple[str, str], MetricResult]:
    """Results in method order, then request/output order (derived and unknown labels last)."""
    order = {label: i for i, label in enumerate(labels)}
    return dict(sorted(merged.items(), key=lambda kv: (methods.index(kv[0][0]), order.get(kv[0][1], len(order)))))
