"""Figures of an evaluation: mean deletion/insertion curves per method and metric bars with bootstrap CIs."""

from __future__ import annotations

import math
from typing import Any

from traitlens.evaluation.results import EvalResults

__all__ = ["evaluation_figures"]


def evaluation_figures(res: EvalResults) -> dict[str, bytes]:
    """name → PNG bytes: "curves" (when deletion/insertion were computed) and "metrics" (one bar panel each)."""
    import matplotlib

    matplotlib.use("Agg", force=False)

    figs: dict[str, bytes] = {}
    curve_metrics = [m for m in res.metrics if m.partition("@")[0] in ("deletion", "insertion")]
    if curve_metrics:
        figs["curves"] = _curves(res, curve_metrics)
    if res.metrics:
        figs["metrics"] = _bars(res, list(res.metrics))
    return figs


def _curves(res: EvalResults, curve_metrics: list[str]) -> bytes:
    import matplotlib.pyplot as plt

    from traitlens.viz import figure_png

    fig, axes = plt.subplots(1, len(curve_metrics), figsize=(4.2 * len(curve_metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], curve_metrics, strict=True):
        for method in res.methods:
            r = res.results.get((method, metric))
            if r is None or r.curves is None or r.curve_x is None:
                continue
            mean = r.curves.flatten(0, 1).nanmean(0)
            ax.plot(r.curve_x.numpy(), mean.numpy(), label=f"{method} ({r.value:.3f})")
        ax.set_title(f"{metric} ({'↑' if metric.startswith('insertion') else '↓'} AUC)")
        ax.set_xlabel("fraction of the image perturbed")
        ax.set_ylabel("mean target score")
        ax.legend(fontsize=6)
    return figure_png(fig)


def _bars(res: EvalResults, labels: list[str]) -> bytes:
    import matplotlib.pyplot as plt

    from traitlens.viz import figure_png

    cols = min(4, len(labels))
    rows = math.ceil(len(labels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    fig.subplots_adjust(hspace=0.9, wspace=0.35)  # room for rotated method names under every row
    for ax, metric in zip(axes.flat, labels, strict=False):
        vals, errs, names = _bar_values(res, metric)
        direction = next((res.results[(m, metric)].direction for m in names), "none")
        ax.bar(range(len(vals)), vals, yerr=errs, capsize=2, color="#4c72b0")
        ax.set_xticks(range(len(vals)), names, rotation=60, ha="right", fontsize=6)
        ax.set_title(metric + {"higher": " ↑", "lower": " ↓", "none": ""}[direction], fontsize=8)
        ax.tick_params(axis="y", labelsize=6)
    for ax in list(axes.flat)[len(labels):]:
        ax.axis("off")
    return figure_png(fig)


def _bar_values(res: EvalResults, metric: str) -> tuple[list[Any], list[list[float]], list[str]]:
    """(values, [lower, upper] error bar lengths, method names) of one metric's panel."""
    vals: list[Any] = []
    errs: list[list[float]] = [[], []]
    names: list[str] = []
    for method in res.methods:
        row = res.row(method, metric)
        if row is None:
            continue
        names.append(method)
        v = row["value"]
        vals.append(v)
        lo, hi = row["ci_low"], row["ci_high"]
        errs[0].append(0 if math.isnan(lo) or math.isnan(v) else max(v - lo, 0))
        errs[1].append(0 if math.isnan(hi) or math.isnan(v) else max(hi - v, 0))
    return vals, errs, names
