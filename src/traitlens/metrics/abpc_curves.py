"""Area between the perturbation curves, ABPC = AUC(LeRF) − AUC(MoRF) (metrics.md §1.3): generic, and the
reference presets 'agcam' and 'iba'."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from traitlens.metrics._registry import MetricResult, knob_record, register_metric
from traitlens.metrics.inputs import grid_region, map_normalisation, perturbation_inputs
from traitlens.metrics.perturbation import perturbation_scores
from traitlens.metrics.perturbation import substrate as make_substrate
from traitlens.metrics.ranking import pixel_ranks
from traitlens.metrics.stats import trapezoid_auc

__all__ = ["ABPC_PRESETS", "abpc"]

#: ABPC preset knob table (metrics.md §1.3): one home for each reference protocol's defaults.
ABPC_PRESETS: dict[str, dict[str, Any]] = {
    "agcam": {"unit": "pixel", "fractions": tuple(i / 10 for i in range(11)), "substrate": "zero", "score": "prob",
              "target": "label", "auc": "mean", "maps": "bilinear_minmax"},
    "iba": {"unit": 8, "fractions": None, "substrate": "zero", "score": "prob", "target": "explained",
            "auc": "trapezoid", "maps": "exp"},
}


@register_metric("abpc", category="faithfulness", direction="higher", needs=["model"],
                 cost="2 × steps forwards per (image, target) ('agcam': 22)", spec="metrics.md §1.3",
                 summary="Area between the LeRF and MoRF perturbation curves; presets 'agcam', 'iba'")
def abpc(
    model: Callable[[torch.Tensor], Any],
    images: torch.Tensor,
    exp: Any,
    *,
    preset: str | None = None,
    unit: str | int | None = None,
    fractions: Sequence[float] | None = None,
    auc: str | None = None,
    substrate: str | None = None,
    score: str | None = None,
    target: Any = None,
    tie_break: str = "index",
    seed: int = 0,
    indices: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    batch_size: int = 64,
) -> MetricResult:
    """ABPC = AUC(LeRF) − AUC(MoRF), with the same unit, steps and substrate for both (metrics.md §1.3). ↑.

    Generic (preset None): Samek's curves — r×r regions with r = the patch size, one region per step over all
    regions, substrate 'zero', trapezoid AUC. With `fractions`, step q removes int(n·q) locations.
    Preset 'agcam' (the AGCAM repository's `ABPC.py`): maps = min-max(bilinear(patch_maps)), GT-label target,
    fractions 0, 0.1, …, 1 of the pixels (k = int(HW·q), truncated), zero substrate, softmax probability, AUC =
    the mean over the 11 points, so ABPC = (1/11)·Σ_q (LeRF_q − MoRF_q). Preset 'iba': 8×8 tiles, zero baseline,
    trapezoid with spacing 1/#steps (tile sizes not confirmed; pass unit=14 for the other one).
    Explicit arguments override the preset.

    Returns:
        values [B,K]; curves [B,K,S] = LeRF − MoRF; extras 'morf_curve', 'lerf_curve'.
    """
    if preset is not None and preset not in ABPC_PRESETS:
        raise ValueError(f"unknown ABPC preset '{preset}'; choose from {list(ABPC_PRESETS)}")
    generic: dict[str, Any] = {"unit": None, "fractions": None, "substrate": "zero", "score": "prob",
                               "target": "explained", "auc": "trapezoid", "maps": "exp"}
    p = ABPC_PRESETS[preset] if preset is not None else generic
    unit = unit if unit is not None else p["unit"]
    fractions = fractions if fractions is not None else p["fractions"]
    auc = auc or p["auc"]
    sub = substrate or p["substrate"]
    score = score or p["score"]
    target = target if target is not None else p["target"]
    maps, targets, patch = perturbation_inputs(exp, images, model, labels, target, batch_size, p["maps"])
    if unit is None:
        unit = grid_region(exp, maps)
    curves = {}
    for order in ("morf", "lerf"):
        ranks, n_loc = pixel_ranks(maps, unit, order, tie_break, seed, indices, patch)
        if fractions is not None:
            counts = (torch.tensor(list(fractions), dtype=torch.float64) * n_loc).long()
        else:
            counts = torch.arange(n_loc + 1)
        fill = make_substrate(sub, images, model, seed, indices)
        curves[order] = perturbation_scores(model, images, ranks, counts, fill, targets, score=score,
                                            batch_size=batch_size)
    if auc == "mean":
        areas = {k: v.mean(-1) for k, v in curves.items()}
    elif auc == "trapezoid":
        areas = {k: trapezoid_auc(v) for k, v in curves.items()}
    else:
        raise ValueError(f"unknown auc '{auc}'; choose 'mean' or 'trapezoid'")
    x = counts.double() / n_loc
    return MetricResult(
        "abpc", areas["lerf"] - areas["morf"], "higher",
        knob_record(spec="metrics.md §1.3", preset=preset, unit=unit, fractions=None if fractions is None else
               list(fractions), n_points=len(counts), substrate=sub, score=score,
               target=target if isinstance(target, str) else "given", auc=auc, tie_break=tie_break,
               maps="bilinear+minmax of patch_maps" if p["maps"] == "bilinear_minmax" else "exp.maps",
               map_normalisation="minmax" if p["maps"] == "bilinear_minmax" else map_normalisation(exp)),
        curves=curves["lerf"] - curves["morf"], curve_x=x,
        extras={"morf_curve": curves["morf"], "lerf_curve": curves["lerf"]},
    )
