"""Faithfulness by perturbation (metrics.md §1): RISE deletion/insertion, MoRF/LeRF AOPC (generic, 'samek',
'chefer'), ABPC (generic, 'agcam', 'iba'), ROAD with noisy linear imputation, and agreement with token ablation.

Every perturbation metric builds the perturbed copies of all steps of all images as one flat stack, chunked by
`batch_size`, and runs the model once per chunk (`_common.perturbation_scores`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from traitlens.metrics._common import (
    batch_indices,
    explanation_parts,
    image_generator,
    logits_of,
    map_normalisation,
    minmax,
    pearson,
    perturbation_scores,
    pixel_ranks,
    resolve_targets,
    spearman,
    trapezoid_auc,
)
from traitlens.metrics._common import (
    substrate as make_substrate,
)
from traitlens.metrics._registry import MetricResult, register_aggregator, register_metric

__all__ = [
    "abpc",
    "aopc",
    "aopc_lerf",
    "aopc_morf",
    "chefer_perturbation",
    "deletion",
    "insertion",
    "noisy_linear_impute",
    "road",
    "tam_agreement",
]

log = logging.getLogger(__name__)

#: Preset knob tables (metrics.md §1.2, §1.3): one home for each reference protocol's defaults.
ABPC_PRESETS: dict[str, dict[str, Any]] = {
    "agcam": {"unit": "pixel", "fractions": tuple(i / 10 for i in range(11)), "substrate": "zero", "score": "prob",
              "target": "label", "auc": "mean", "maps": "bilinear_minmax"},
    "iba": {"unit": 8, "fractions": None, "substrate": "zero", "score": "prob", "target": "explained",
            "auc": "trapezoid", "maps": "exp"},
}
AOPC_PRESETS: dict[str, dict[str, Any]] = {
    "samek": {"region": 9, "steps": 100, "substrate": "uniform"},
}


def _grid_region(exp: Any, maps: torch.Tensor) -> int:
    """The patch size as a region side (maps' height over the patch grid height); 1 for raw tensors."""
    if isinstance(exp, torch.Tensor):
        return 1
    return max(1, maps.shape[-2] // exp.patch_maps.shape[-2])


def _prepare(exp: Any, images: torch.Tensor, model: Any, labels: torch.Tensor | None, target: Any,
             batch_size: int, maps_mode: str = "exp") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(maps [B,K,H,W] on the image device, targets [B,K], patch maps or None)."""
    maps, exp_targets = explanation_parts(exp)
    patch = None if isinstance(exp, torch.Tensor) else exp.patch_maps
    if maps_mode == "bilinear_minmax" and patch is not None:
        # AGCAM/Chefer reference order: bilinear upsampling of the token map, then min-max (after upsampling).
        up = F.interpolate(patch.reshape(-1, 1, *patch.shape[-2:]).double(), size=maps.shape[-2:], mode="bilinear",
                           align_corners=False)
        maps = minmax(up.view(*patch.shape[:2], *maps.shape[-2:]))[0]
    targets = resolve_targets(target, exp_targets, model, images, labels, maps.shape[1], batch_size)
    return maps.to(images.device), targets, patch


def _knobs(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def _rise(model: Any, images: torch.Tensor, exp: Any, *, insertion: bool, step: int | None, steps: int | None,
          unit: str, substrate: str, score: str, target: Any, tie_break: str, seed: int,
          indices: torch.Tensor | None, labels: torch.Tensor | None, batch_size: int) -> MetricResult:
    maps, targets, patch = _prepare(exp, images, model, labels, target, batch_size)
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
        _knobs(spec="metrics.md §1.1", unit=unit, step_locations=m, n_steps=n, substrate=substrate, score=score,
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
    maps, targets, patch = _prepare(exp, images, model, labels, target, batch_size)
    r = region or knobs.get("region") or _grid_region(exp, maps)
    L = steps if steps is not None else knobs.get("steps")
    sub = substrate or knobs.get("substrate", "zero")
    ranks, n_loc = pixel_ranks(maps, r, order, tie_break, seed, indices, patch)
    counts = _region_counts(n_loc, L)
    fill = make_substrate(sub, images, model, seed, indices)
    curves = perturbation_scores(model, images, ranks, counts, fill, targets, score=score, batch_size=batch_size)
    values = (curves[..., :1] - curves).mean(-1)
    return MetricResult(
        f"aopc_{order}", values, "higher" if order == "morf" else "lower",
        _knobs(spec="metrics.md §1.2", preset=preset, order=order, region=r, steps=len(counts) - 1, substrate=sub,
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
    maps, targets, patch = _prepare(exp, images, model, labels, "explained", batch_size, "bilinear_minmax")
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
        _knobs(spec="metrics.md §1.2 preset 'chefer'", sign=sign, fractions=list(fractions), substrate="black",
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
    p = ABPC_PRESETS.get(preset, {"unit": None, "fractions": None, "substrate": "zero", "score": "prob",
                                  "target": "explained", "auc": "trapezoid", "maps": "exp"})
    unit = unit if unit is not None else p["unit"]
    fractions = fractions if fractions is not None else p["fractions"]
    auc = auc or p["auc"]
    sub = substrate or p["substrate"]
    score = score or p["score"]
    target = target if target is not None else p["target"]
    maps, targets, patch = _prepare(exp, images, model, labels, target, batch_size, p["maps"])
    if unit is None:
        unit = _grid_region(exp, maps)
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
        _knobs(spec="metrics.md §1.3", preset=preset, unit=unit, fractions=None if fractions is None else
               list(fractions), n_points=len(counts), substrate=sub, score=score,
               target=target if isinstance(target, str) else "given", auc=auc, tie_break=tie_break,
               maps="bilinear+minmax of patch_maps" if p["maps"] == "bilinear_minmax" else "exp.maps",
               map_normalisation="minmax" if p["maps"] == "bilinear_minmax" else map_normalisation(exp)),
        curves=curves["lerf"] - curves["morf"], curve_x=x,
        extras={"morf_curve": curves["morf"], "lerf_curve": curves["lerf"]},
    )


# ----------------------------------------------------------------------------- ROAD


_ROAD_KERNEL = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))


def noisy_linear_impute(
    images: torch.Tensor,
    removed: torch.Tensor,
    *,
    noise: float = 0.01,
    solver: str = "cg",
    tol: float = 1e-6,
    max_iter: int = 1000,
    generators: Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """ROAD's noisy linear imputation (metrics.md §1.4) of `removed` pixels ([N,H,W] bool) in `images` [N,C,H,W].

    Each removed pixel equals the weighted mean of its in-image 8-neighbours (1/6 edge, 1/12 diagonal, renormalised
    over the neighbours inside the image); all removed pixels of a channel are solved jointly. Multiplying each row
    by its normaliser Z_i gives the symmetric, diagonally dominant system (Z − W_UU) x_U = W_UK x_K, positive definite
    whenever a pixel is kept, which CG solves batched on the device ('cg', tol relative to ‖b‖) or SciPy's sparse LU
    per image ('direct', on the CPU). Then N(0, noise²) is added to each imputed value.
    """
    N, C, H, W = images.shape
    x = images.double()
    U = removed.to(x.device).bool().view(N, 1, H, W)
    if solver == "direct":
        sol = _impute_direct(x, U)
    elif solver == "cg":
        sol = _impute_cg(x, U, tol, max_iter)
    else:
        raise ValueError(f"unknown solver '{solver}'; choose 'cg' or 'direct'")
    if noise:
        gens = generators or [None] * N
        eps = torch.stack([torch.randn((C, H, W), generator=g, dtype=torch.float64) for g in gens]).to(x.device)
        sol = sol + noise * eps
    return torch.where(U, sol, x).to(images.dtype)


def _impute_cg(x: torch.Tensor, U: torch.Tensor, tol: float, max_iter: int) -> torch.Tensor:
    N, C, H, W = x.shape
    kern = torch.tensor(_ROAD_KERNEL, dtype=torch.float64, device=x.device).view(1, 1, 3, 3).expand(C, 1, 3, 3)
    Uf = U.double().expand(N, C, H, W)

    def conv(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kern, padding=1, groups=C)  # zero padding = neighbours outside the image do not count

    Z = conv(torch.ones(1, C, H, W, dtype=torch.float64, device=x.device))

    def A(v: torch.Tensor) -> torch.Tensor:
        return Uf * (Z * v - conv(Uf * v))

    b = Uf * conv((1 - Uf) * x)
    # Start from a push-pull (pyramid) fill: CG is slow on exactly the smooth, low-frequency error modes that a
    # coarse-to-fine fill already gets right, so this cuts the iteration count on large holes several-fold.
    v = Uf * _push_pull(x, 1 - U.double())
    r = b - A(v)
    p = r.clone()
    rs = (r * r).sum((-2, -1), keepdim=True)
    b_norm = (b * b).sum((-2, -1), keepdim=True).sqrt().clamp_min(1e-300)
    it = 0
    for it in range(max_iter):  # noqa: B007 (reported below)
        if bool(((rs.sqrt() / b_norm) <= tol).all()):
            break
        Ap = A(p)
        pAp = (p * Ap).sum((-2, -1), keepdim=True)
        alpha = torch.where(pAp > 0, rs / torch.where(pAp > 0, pAp, torch.ones_like(pAp)), torch.zeros_like(pAp))
        v = v + alpha * p
        r = r - alpha * Ap
        rs_new = (r * r).sum((-2, -1), keepdim=True)
        beta = torch.where(rs > 0, rs_new / torch.where(rs > 0, rs, torch.ones_like(rs)), torch.zeros_like(rs))
        p = r + beta * p
        rs = rs_new
    else:
        log.warning("ROAD CG did not reach tol %.1e in %d iterations (worst residual %.2e)", tol, max_iter,
                    float((rs.sqrt() / b_norm).max()))
    log.debug("ROAD CG stopped after %d iterations", it)
    return v


def _push_pull(x: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Fill unknown pixels of x [N,C,H,W] (known [N,1,H,W] in {0,1}) from a coarse-to-fine weighted pyramid."""
    H, W = x.shape[-2:]
    if H <= 2 or W <= 2:
        w = known.sum((-2, -1), keepdim=True)
        mean = (x * known).sum((-2, -1), keepdim=True) / w.clamp_min(1e-12)
        return torch.where(known > 0, x, mean.expand_as(x))
    xs = F.avg_pool2d(x * known, 2, ceil_mode=True)
    ws = F.avg_pool2d(known, 2, ceil_mode=True)
    coarse = xs / ws.clamp_min(1e-12)
    filled = _push_pull(coarse, (ws > 0).to(x.dtype))
    up = F.interpolate(filled, size=(H, W), mode="bilinear", align_corners=False)
    return torch.where(known > 0, x, up)


def _impute_direct(x: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    try:
        import numpy as np
        import scipy.sparse as sp
        from scipy.sparse.linalg import spsolve
    except ImportError as err:  # SciPy is optional: 'cg' needs nothing
        raise ImportError("solver='direct' needs SciPy (pip install scipy); solver='cg' does not") from err
    N, C, H, W = x.shape
    out = torch.zeros_like(x)
    xn = x.cpu().numpy()
    offsets = [(dy, dx, _ROAD_KERNEL[dy + 1][dx + 1]) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    for n in range(N):
        mask = U[n, 0].cpu().numpy()
        ys, xs = np.nonzero(mask)
        if ys.size == 0:
            continue
        pos = -np.ones((H, W), dtype=np.int64)
        pos[ys, xs] = np.arange(ys.size)
        rows, cols, vals = [], [], []
        diag = np.zeros(ys.size)
        rhs = np.zeros((ys.size, C))
        for dy, dx, w in offsets:
            ny, nx = ys + dy, xs + dx
            inside = (ny >= 0) & (ny < H) & (nx >= 0) & (nx < W)
            diag[inside] += w
            ii = np.nonzero(inside)[0]
            unknown = pos[ny[ii], nx[ii]]
            is_u = unknown >= 0
            rows.append(ii[is_u])
            cols.append(unknown[is_u])
            vals.append(np.full(is_u.sum(), -w))
            kept = ii[~is_u]
            rhs[kept] += w * xn[n][:, ny[kept], nx[kept]].T
        A = sp.csr_matrix((np.concatenate([diag, *vals]),
                           (np.concatenate([np.arange(ys.size), *rows]), np.concatenate([np.arange(ys.size), *cols]))),
                          shape=(ys.size, ys.size))
        sol = spsolve(A.tocsc(), rhs)
        sol = sol.reshape(ys.size, C)
        out[n][:, ys, xs] = torch.from_numpy(np.ascontiguousarray(sol.T)).to(out)
    return out


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
    maps, targets, patch = _prepare(exp, images, model, labels, target, batch_size)
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
                logits = logits_of(model(x))
            space = logits.softmax(-1) if score == "prob" else logits.log_softmax(-1) if score == "log_prob" else logits
            sc[idx] = space.gather(-1, targets.to(logits.device)[b, k].view(-1, 1)).squeeze(-1).double().cpu()
            ac[idx] = (logits.argmax(-1).cpu() == ref[b, k].cpu()).double()
        curves[order] = sc.view(B, K, P)
        accs[order] = ac.view(B, K, P)
    src = curves if summary == "score" else accs if summary == "accuracy" else None
    if src is None:
        raise ValueError(f"unknown summary '{summary}'; choose 'score' or 'accuracy'")
    knobs = _knobs(spec="metrics.md §1.4", percentages=list(percentages), noise=noise, solver=solver,
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


# ----------------------------------------------------------------------------- TAM agreement


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
    model: Callable[[torch.Tensor], Any],
    images: torch.Tensor,
    exp: Any,
    *,
    mode: str = "pooled",
    correlation: str = "pearson",
    internal_batch_size: int = 64,
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
    return MetricResult("tam_agreement", per_image, "higher",
                        _knobs(spec="metrics.md §1.5", mode=mode, correlation=correlation, level="patch_maps (raw)"),
                        extras={"scores": a, "tam": b}, aggregate=aggregate)
