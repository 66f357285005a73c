"""ROAD, Remove And Debias (metrics.md §1.4), without retraining: remove the top / bottom p % of pixels, fill them
by noisy linear imputation (`traitlens.ops.imputation`) and re-score."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from traitlens.metrics._registry import MetricResult, knob_record, register_metric
from traitlens.metrics.inputs import batch_indices, image_generator, map_normalisation, perturbation_inputs
from traitlens.metrics.ranking import pixel_ranks
from traitlens.ops.imputation import noisy_linear_impute

__all__ = ["road"]


@register_metric("road", category="faithfulness", needs=["model", "labels"],
                 outputs={"road_morf": "lower", "road_lerf": "higher", "road_combined": "higher"},
                 cost="18 imputations + 18 forwards per (image, target)", spec="metrics.md §1.4",
                 summary="ROAD: remove top/bottom p% pixels, fill by noisy linear imputation, re-score")
def road(
    model: Callable[[torch.Tensor], Any],
    images: torch.Tensor,
    exp: Any,
    labels: torch.Tensor | None = None,
    *,
    percentages: Sequence[int] = (10, 20, 30, 40, 50, 60, 70, 80, 90),
    noise: float = 0.01,
    solver: str = "cg",
    summary: str = "score",
    score: str = "prob",
    target: Any = "explained",
    tie_break: str = "index",
    seed: int = 0,
    indices: torch.Tensor | None = None,
    batch_size: int = 64,
) -> dict[str, MetricResult]:
    """ROAD, Remove And Debias (metrics.md §1.4), without retraining.

    For each p, the top-p % (MoRF) or bottom-p % (LeRF) pixels by the map ranking are removed and filled by
    `noisy_linear_impute` (on the model-input tensor: the reference's space is not confirmed). Per p we record the
    target score and top-1 accuracy (against `labels`, else against the target). Scalars (from the score with
    `summary='score'`, from accuracy with 'accuracy'): road_morf = mean_p MoRF_p (↓), road_lerf = mean_p LeRF_p
    (↑), road_combined = mean_p (LeRF_p − MoRF_p)/2 (↑, pytorch-grad-cam `ROADCombined`).

    Returns:
        {"road_morf", "road_lerf", "road_combined"}; curves [B,K,len(p)]; extras hold the accuracy curves.
    """
    maps, targets, patch = perturbation_inputs(exp, images, model, labels, target, batch_size)
    B, K, H, W = maps.shape
    C = images.shape[1]
    q = torch.tensor(list(percentages), dtype=torch.float64) / 100
    counts = (q * H * W).long().to(images.device)
    P = len(counts)
    ids = batch_indices(indices, B)
    ref = labels.long().view(-1, 1).expand(B, K) if labels is not None else targets
    curves: dict[str, torch.Tensor] = {}
    accs: dict[str, torch.Tensor] = {}
    for o, order in enumerate(("morf", "lerf")):
        ranks, _ = pixel_ranks(maps, "pixel", order, tie_break, seed, indices, patch)
        total = B * K * P
        sc = torch.empty(total, dtype=torch.float64)
        ac = torch.empty(total, dtype=torch.float64)
        # Imputation is the expensive part; chunk (image, target, p) triples like the forwards.
        for start in range(0, total, batch_size):
            idx = torch.arange(start, min(start + batch_size, total))
            b, k, s = idx // (K * P), (idx // P) % K, idx % P
            removed = ranks[b, k] < counts[s.to(images.device)].view(-1, 1, 1)
            gens = [image_generator(seed + 7919 * (o * P + int(si)) + int(ki), ids[int(bi)])
                    for bi, ki, si in zip(b, k, s, strict=True)]
            x = noisy_linear_impute(images[b], removed, noise=noise, solver=solver, generators=gens)
            with torch.no_grad():
                logits = model(x)
            space = logits.softmax(-1) if score == "prob" else logits.log_softmax(-1) if score == "log_prob" else logits
            sc[idx] = space.gather(-1, targets.to(logits.device)[b, k].view(-1, 1)).squeeze(-1).double().cpu()
            ac[idx] = (logits.argmax(-1).cpu() == ref[b, k].cpu()).double()
        curves[order] = sc.view(B, K, P)
        accs[order] = ac.view(B, K, P)
    src = curves if summary == "score" else accs if summary == "accuracy" else None
    if src is None:
        raise ValueError(f"unknown summary '{summary}'; choose 'score' or 'accuracy'")
    knobs = knob_record(spec="metrics.md §1.4", percentages=list(percentages), noise=noise, solver=solver,
                   summary=summary, score=score, target=target if isinstance(target, str) else "given",
                   imputation_space="model input (normalised)", tie_break=tie_break, channels=C,
                   map_normalisation=map_normalisation(exp))
    extras = {"morf_accuracy": accs["morf"], "lerf_accuracy": accs["lerf"]}
    return {
        "road_morf": MetricResult("road_morf", src["morf"].mean(-1), "lower", knobs, curves=src["morf"],
                                  curve_x=q, extras=extras),
        "road_lerf": MetricResult("road_lerf", src["lerf"].mean(-1), "higher", knobs, curves=src["lerf"],
                                  curve_x=q, extras=extras),
        "road_combined": MetricResult("road_combined", ((src["lerf"] - src["morf"]) / 2).mean(-1), "higher", knobs,
                                      curves=(src["lerf"] - src["morf"]) / 2, curve_x=q),
    }
