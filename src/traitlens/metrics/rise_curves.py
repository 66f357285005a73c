"""RISE deletion and insertion (metrics.md §1.1): remove (or paste back) the most relevant pixels first and take
the trapezoid AUC of the target score along the way. All steps of all images run as one flat, chunked stack
(`perturbation.perturbation_scores`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from traitlens.metrics._registry import MetricResult, knob_record, register_metric
from traitlens.metrics.inputs import map_normalisation, perturbation_inputs
from traitlens.metrics.perturbation import perturbation_scores
from traitlens.metrics.perturbation import substrate as make_substrate
from traitlens.metrics.ranking import pixel_ranks
from traitlens.metrics.stats import trapezoid_auc

__all__ = ["deletion", "insertion"]


def _rise(model: Any, images: torch.Tensor, exp: Any, *, insertion: bool, step: int | None, steps: int | None,
          unit: str, substrate: str, score: str, target: Any, tie_break: str, seed: int,
          indices: torch.Tensor | None, labels: torch.Tensor | None, batch_size: int) -> MetricResult:
    maps, targets, patch = perturbation_inputs(exp, images, model, labels, target, batch_size)
    W = maps.shape[-1]
    ranks, n_loc = pixel_ranks(maps, unit, "morf", tie_break, seed, indices, patch)
    if unit == "patch":
        m = 1
    elif steps is not None:
        m = math.ceil(n_loc / steps)
    else:
        m = step if step is not None else W  # RISE reference: one image row's worth of pixels per step
    n = math.ceil(n_loc / m)
    counts = (torch.arange(n + 1) * m).clamp(max=n_loc)
    fill = make_substrate(substrate, images, model, seed, indices)
    curves = perturbation_scores(model, images, ranks, counts, fill, targets, score=score, insertion=insertion,
                                 batch_size=batch_size)
    name = "insertion" if insertion else "deletion"
    return MetricResult(
        name, trapezoid_auc(curves), "higher" if insertion else "lower",
        knob_record(spec="metrics.md §1.1", unit=unit, step_locations=m, n_steps=n, substrate=substrate, score=score,
               target=target if isinstance(target, str) else "given", tie_break=tie_break, auc="trapezoid",
               order="morf", maps="exp.maps" if unit != "patch" else "exp.patch_maps",
               map_normalisation=map_normalisation(exp)),
        curves=curves, curve_x=counts.double() / n_loc,
    )


@register_metric("deletion", category="faithfulness", direction="lower", needs=["model"],
                 cost="⌈HW/m⌉+1 forwards per (image, target), no grad", spec="metrics.md §1.1",
                 summary="RISE deletion AUC: remove most-relevant pixels first; the score should fall fast")
def deletion(
    model: Callable[[torch.Tensor], Any],
    images: torch.Tensor,
    exp: Any,
    *,
    step: int | None = None,
    steps: int | None = None,
    unit: str = "pixel",
    substrate: str = "zero",
    score: str = "prob",
    target: Any = "explained",
    tie_break: str = "index",
    seed: int = 0,
    indices: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    batch_size: int = 64,
) -> MetricResult:
    """RISE deletion (metrics.md §1.1). ↓.

    x⁽ᵏ⁾ replaces the first k·m locations of the MoRF order by the substrate; p_k = score(x⁽ᵏ⁾), k = 0..n, and
    AUC = (Σ_k p_k − (p_0 + p_n)/2) / n.

    Args:
        model: image → logits.
        images: [B,C,H,W] in the model's input space.
        exp: an `Explanation` (reads `maps`, or `patch_maps` with unit='patch') or a raw [B,(K,)H,W] map tensor.
        step: m, locations per step (default W: one row of pixels, the RISE reference). `steps` sets n instead.
        unit: 'pixel' or 'patch' (one patch per step, ranked by `patch_maps`).
        substrate: 'zero' (default), 'black', 'blur', 'mean', 'uniform'.
        score: 'prob' (default), 'logit', 'log_prob'.
        target: 'explained' (exp.targets), 'pred', 'label' or a [B(,K)] tensor.
        tie_break: 'index' or 'random' (seeded per image by `seed` and `indices`).
        batch_size: perturbed images per forward.

    Returns:
        `MetricResult` with values [B,K] and curves [B,K,n+1].
    """
    return _rise(model, images, exp, insertion=False, step=step, steps=steps, unit=unit, substrate=substrate,
                 score=score, target=target, tie_break=tie_break, seed=seed, indices=indices, labels=labels,
                 batch_size=batch_size)


@register_metric("insertion", category="faithfulness", direction="higher", needs=["model"],
                 cost="⌈HW/m⌉+1 forwards per (image, target), no grad", spec="metrics.md §1.1",
                 summary="RISE insertion AUC: paste most-relevant pixels into a blurred image; the score should rise")
def insertion(
    model: Callable[[torch.Tensor], Any],
    images: torch.Tensor,
    exp: Any,
    *,
    step: int | None = None,
    steps: int | None = None,
    unit: str = "pixel",
    substrate: str = "blur",
    score: str = "prob",
    target: Any = "explained",
    tie_break: str = "index",
    seed: int = 0,
    indices: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    batch_size: int = 64,
) -> MetricResult:
    """RISE insertion (metrics.md §1.1). ↑.

    x⁽⁰⁾ is the substrate (default RISE's blur) and x⁽ᵏ⁾ pastes the first k·m MoRF locations back from the
    image; AUC as for `deletion`. Arguments as for `deletion`.
    """
    return _rise(model, images, exp, insertion=True, step=step, steps=steps, unit=unit, substrate=substrate,
                 score=score, target=target, tie_break=tie_break, seed=seed, indices=indices, labels=labels,
                 batch_size=batch_size)
