"""Area over the perturbation curve (metrics.md §1.2): Samek's AOPC for the MoRF and LeRF orders (generic and
preset 'samek') and Chefer et al.'s positive / negative perturbation test (preset 'chefer')."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from traitlens.metrics._registry import MetricResult, knob_record, register_metric
from traitlens.metrics.inputs import grid_region, map_normalisation, perturbation_inputs
from traitlens.metrics.perturbation import perturbation_scores
from traitlens.metrics.perturbation import substrate as make_substrate
from traitlens.metrics.ranking import pixel_ranks

__all__ = ["AOPC_PRESETS", "aopc", "aopc_lerf", "aopc_morf", "chefer_negative", "chefer_perturbation",
           "chefer_positive"]

#: AOPC preset knob table (metrics.md §1.2); preset 'chefer' delegates to `chefer_perturbation`.
AOPC_PRESETS: dict[str, dict[str, Any]] = {
    "samek": {"region": 9, "steps": 100, "substrate": "uniform"},
}


def _region_counts(n_loc: int, steps: int | None) -> torch.Tensor:
    L = n_loc if steps is None else min(steps, n_loc)
    return torch.arange(L + 1)


def aopc(
    model: Callable[[torch.Tensor], Any],
    images: torch.Tensor,
    exp: Any,
    *,
    order: str = "morf",
    preset: str | None = None,
    region: int | None = None,
    steps: int | None = None,
    substrate: str | None = None,
    score: str = "prob",
    target: Any = "explained",
    tie_break: str = "index",
    seed: int = 0,
    indices: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    batch_size: int = 64,
) -> MetricResult:
    """Samek's AOPC for the MoRF (↑) or LeRF (↓) order (metrics.md §1.2).

    Non-overlapping r×r regions, ranked by summed relevance, are perturbed one per step for L steps:
    **AOPC = 1/(L+1)·Σ_{k=0..L} (p_0 − p_k)**.

    Args:
        order: 'morf' or 'lerf'.
        preset: None (r = the patch size, L = all regions, substrate 'zero'), 'samek' (r = 9, L = 100, uniform
            random values; not confirmed against the paper) or 'chefer' (delegates to `chefer_perturbation`).
        region: r; steps: L; substrate: overrides the preset.
        Other arguments as for `deletion`.
    """
    if preset == "chefer":
        return chefer_perturbation(model, images, exp, labels=labels, sign="positive" if order == "morf" else
                                   "negative", tie_break=tie_break, seed=seed, indices=indices, batch_size=batch_size)
    if preset is not None and preset not in AOPC_PRESETS:
        raise ValueError(f"unknown AOPC preset '{preset}'; choose from {[*AOPC_PRESETS, 'chefer']}")
    knobs = dict(AOPC_PRESETS[preset]) if preset is not None else {}
    maps, targets, patch = perturbation_inputs(exp, images, model, labels, target, batch_size)
    r = region or knobs.get("region") or grid_region(exp, maps)
    L = steps if steps is not None else knobs.get("steps")
    sub = substrate or knobs.get("substrate", "zero")
    ranks, n_loc = pixel_ranks(maps, r, order, tie_break, seed, indices, patch)
    counts = _region_counts(n_loc, L)
    fill = make_substrate(sub, images, model, seed, indices)
    curves = perturbation_scores(model, images, ranks, counts, fill, targets, score=score, batch_size=batch_size)
    values = (curves[..., :1] - curves).mean(-1)
    return MetricResult(
        f"aopc_{order}", values, "higher" if order == "morf" else "lower",
        knob_record(spec="metrics.md §1.2", preset=preset, order=order, region=r, steps=len(counts) - 1, substrate=sub,
               score=score, target=target if isinstance(target, str) else "given", tie_break=tie_break,
               map_normalisation=map_normalisation(exp)),
        curves=curves, curve_x=counts.double() / n_loc,
    )


def _aopc_entry(order: str) -> Callable[..., MetricResult]:
    def entry(
        model: Callable[[torch.Tensor], Any],
        images: torch.Tensor,
        exp: Any,
        *,
        preset: str | None = None,
        region: int | None = None,
        steps: int | None = None,
        substrate: str | None = None,
        score: str = "prob",
        target: Any = "explained",
        tie_break: str = "index",
        seed: int = 0,
        indices: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        batch_size: int = 64,
    ) -> MetricResult:
        return aopc(model, images, exp, order=order, preset=preset, region=region, steps=steps, substrate=substrate,
                    score=score, target=target, tie_break=tie_break, seed=seed, indices=indices, labels=labels,
                    batch_size=batch_size)

    entry.__name__ = entry.__qualname__ = f"aopc_{order}"
    entry.__doc__ = f"`aopc(order='{order}')` (metrics.md §1.2); {'↑' if order == 'morf' else '↓'}."
    return entry


aopc_morf = register_metric(
    "aopc_morf", category="faithfulness", direction="higher", needs=["model"], cost="L+1 forwards per (image, target)",
    spec="metrics.md §1.2", summary="Samek AOPC, most relevant regions first: the score should drop fast",
)(_aopc_entry("morf"))
aopc_lerf = register_metric(
    "aopc_lerf", category="faithfulness", direction="lower", needs=["model"], cost="L+1 forwards per (image, target)",
    spec="metrics.md §1.2", summary="Samek AOPC, least relevant regions first: the score should hold",
)(_aopc_entry("lerf"))


def chefer_perturbation(
    model: Callable[[torch.Tensor], Any],
    images: torch.Tensor,
    exp: Any,
    labels: torch.Tensor | None = None,
    *,
    sign: str = "positive",
    fractions: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    tie_break: str = "index",
    seed: int = 0,
    indices: torch.Tensor | None = None,
    batch_size: int = 64,
) -> MetricResult:
    """Chefer et al.'s positive (↓) / negative (↑) perturbation test (metrics.md §1.2 preset 'chefer').

    Maps are upsampled bilinearly and min-max normalised; the top (positive, MoRF) or bottom (negative, LeRF)
    int(HW·q) pixels are set to black (0 in [0,1] space, before normalisation) for q in `fractions` (the 0 point is
    the unperturbed image); the curve is top-1 accuracy against the label, the summary its trapezoid area over the
    fractions divided by their span (the reference's AUC computation is not confirmed). The explained class is
    the top-1 prediction (explain with the default target).
    """
    if labels is None:
        raise ValueError("chefer_perturbation needs labels (it measures top-1 accuracy)")
    maps, targets, patch = perturbation_inputs(exp, images, model, labels, "explained", batch_size, "bilinear_minmax")
    B, K = maps.shape[:2]
    order = "morf" if sign == "positive" else "lerf"
    ranks, n_loc = pixel_ranks(maps, "pixel", order, tie_break, seed, indices, patch)
    q = torch.tensor(list(fractions), dtype=torch.float64)
    counts = (q * n_loc).long()
    fill = make_substrate("black", images, model)
    lab = labels.long().view(-1, 1).expand(B, K)
    _, hits = perturbation_scores(model, images, ranks, counts, fill, targets, score="logit",
                                  batch_size=batch_size, extra_targets=lab)
    span = float(q[-1] - q[0]) or 1.0
    values = torch.trapezoid(hits, q, dim=-1) / span
    return MetricResult(
        f"chefer_{sign}", values, "lower" if sign == "positive" else "higher",
        knob_record(spec="metrics.md §1.2 preset 'chefer'", sign=sign, fractions=list(fractions), substrate="black",
               maps="bilinear+minmax of patch_maps", measure="top-1 accuracy vs label",
               auc="trapezoid / span (not confirmed)", tie_break=tie_break),
        curves=hits, curve_x=q,
    )


@register_metric("chefer_positive", category="faithfulness", direction="lower", needs=["model", "labels"],
                 cost="10 forwards per (image, target)", spec="metrics.md §1.2",
                 summary="Chefer positive perturbation: accuracy AUC when the most relevant pixels are blacked out")
def chefer_positive(model: Callable[[torch.Tensor], Any], images: torch.Tensor, exp: Any,
                    labels: torch.Tensor | None = None, *, tie_break: str = "index", seed: int = 0,
                    indices: torch.Tensor | None = None, batch_size: int = 64) -> MetricResult:
    """`chefer_perturbation(sign='positive')`, ↓."""
    return chefer_perturbation(model, images, exp, labels, sign="positive", tie_break=tie_break, seed=seed,
                               indices=indices, batch_size=batch_size)


@register_metric("chefer_negative", category="faithfulness", direction="higher", needs=["model", "labels"],
                 cost="10 forwards per (image, target)", spec="metrics.md §1.2",
                 summary="Chefer negative perturbation: accuracy AUC when the least relevant pixels are blacked out")
def chefer_negative(model: Callable[[torch.Tensor], Any], images: torch.Tensor, exp: Any,
                    labels: torch.Tensor | None = None, *, tie_break: str = "index", seed: int = 0,
                    indices: torch.Tensor | None = None, batch_size: int = 64) -> MetricResult:
    """`chefer_perturbation(sign='negative')`, ↑."""
    return chefer_perturbation(model, images, exp, labels, sign="negative", tie_break=tie_break, seed=seed,
                               indices=indices, batch_size=batch_size)
