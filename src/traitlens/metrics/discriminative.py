"""Class sensitivity and discriminativeness (metrics.md §6): Rebuffi's class sensitivity, random logit (SSIM),
pairwise class-map similarity, and the TraitShapes discriminative precision (trait / contrast / class EBPG)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from traitlens.metrics._registry import MetricResult, register_metric
from traitlens.metrics.inputs import batch_indices, explanation_parts, image_generator, predict
from traitlens.metrics.pointing import energy_share
from traitlens.metrics.ranking import location_ranks
from traitlens.metrics.stats import SSIM_SETTINGS, minmax_ssim, pearson, spearman

__all__ = ["class_sensitivity", "pairwise_class_similarity", "random_logit", "trait_precision"]


def _logits(model: Any, images: torch.Tensor, exp: Any, batch_size: int = 64) -> torch.Tensor:
    logits = getattr(exp, "logits", None)
    return logits.cpu() if logits is not None else predict(model, images, batch_size).cpu()


def _explain_maps(explainer: Callable[..., Any], model: Any, images: torch.Tensor, targets: torch.Tensor,
                  level: str) -> torch.Tensor:
    out = explainer(model, images, targets.to(images.device))
    return explanation_parts(out, level)[0].detach().double().cpu()


@register_metric("class_sensitivity", category="discriminative", direction="lower", needs=["model", "explainer"],
                 cost="one explanation call with K = 2", spec="metrics.md §6",
                 summary="Correlation of the maps of the most and least likely classes (1 = class-agnostic)")
def class_sensitivity(
    model: Callable[[torch.Tensor], Any],
    images: torch.Tensor,
    exp: Any,
    explainer: Callable[..., Any],
    *,
    correlation: str = "pearson",
    level: str = "pixel",
    batch_size: int = 64,
) -> MetricResult:
    """Class sensitivity (Rebuffi et al. 2020) (metrics.md §6). ↓ = more class-sensitive.

    Per image, with c_hi = argmax logit and c_lo = argmin logit: corr(map_{c_hi}, map_{c_lo}) over pixels
    (Pearson by default, Spearman an option; which the paper used is not confirmed). Class-agnostic methods score
    exactly 1. One value per image (shape [B,1]); a constant map gives NaN.
    """
    logits = _logits(model, images, exp, batch_size)
    pair = torch.stack([logits.argmax(-1), logits.argmin(-1)], 1)
    maps = _explain_maps(explainer, model, images, pair, level).flatten(2)
    if correlation == "pearson":
        r = pearson(maps[:, 0], maps[:, 1])
    elif correlation == "spearman":
        r = spearman(maps[:, 0], maps[:, 1])
    else:
        raise ValueError(f"unknown correlation '{correlation}'; choose 'pearson' or 'spearman'")
    return MetricResult("class_sensitivity", r[:, None], "lower",
                        {"spec": "metrics.md §6", "correlation": correlation, "level": level,
                         "classes": "argmax vs argmin logit"})


@register_metric("random_logit", category="discriminative", direction="lower", needs=["model", "explainer"],
                 cost="one explanation call with K = 2", spec="metrics.md §6",
                 summary="SSIM between the map of the target and of a random other class (Sixt et al.)")
def random_logit(
    model: Callable[[torch.Tensor], Any],
    images: torch.Tensor,
    exp: Any,
    explainer: Callable[..., Any],
    labels: torch.Tensor | None = None,
    *,
    target: str = "explained",
    seed: int = 42,
    indices: torch.Tensor | None = None,
    level: str = "pixel",
    batch_size: int = 64,
) -> MetricResult:
    """Random logit (Sixt et al. 2020; Quantus `RandomLogit`) (metrics.md §6). ↓.

    SSIM(map_y, map_{c′}) with c′ drawn uniformly from the classes ≠ y (generator seeded by (seed, dataset index)),
    SSIM with a 7×7 uniform window, K1 = 0.01, K2 = 0.03, data_range = 1 on min-max maps. y = exp.targets[:, 0]
    (`target='explained'`) or the label ('label').
    """
    logits = _logits(model, images, exp, batch_size)
    B, C = logits.shape
    if target == "label":
        if labels is None:
            raise ValueError("target='label' needs labels")
        y = labels.long().cpu()
    else:
        y = exp.targets[:, 0].long().cpu()
    ids = batch_indices(indices, B)
    other = torch.stack([torch.randint(0, C - 1, (1,), generator=image_generator(seed, i))[0] for i in ids])
    other = other + (other >= y).long()  # uniform over the C−1 classes ≠ y
    maps = _explain_maps(explainer, model, images, torch.stack([y, other], 1), level)
    return MetricResult("random_logit", minmax_ssim(maps[:, 0], maps[:, 1])[:, None], "lower",
                        {"spec": "metrics.md §6", "seed": seed, "target": target, "level": level,
                         "ssim": SSIM_SETTINGS},
                        extras={"other_class": other[:, None]})


@register_metric("pairwise_class_similarity", category="discriminative", direction="lower",
                 needs=["model", "explainer"], cost="one explanation call with K = k", spec="metrics.md §6",
                 summary="Mean off-diagonal Pearson r between the maps of an image's top-k classes")
def pairwise_class_similarity(
    model: Callable[[torch.Tensor], Any],
    images: torch.Tensor,
    exp: Any,
    explainer: Callable[..., Any],
    *,
    k: int = 5,
    variant: str = "pearson",
    top_fraction: float = 0.1,
    level: str = "pixel",
    batch_size: int = 64,
) -> MetricResult:
    """Pairwise class-map similarity (traitlens proposal, metrics.md §6). ↓.

    For the top-k classes of each image, the k×k Pearson matrix of their maps; the score is its mean off-diagonal
    value. `variant='iou'` uses the IoU of the top-`top_fraction` masks (§0 tie rule) instead.
    """
    logits = _logits(model, images, exp, batch_size)
    k = min(k, logits.shape[-1])
    top = logits.topk(k, -1).indices
    maps = _explain_maps(explainer, model, images, top, level).flatten(2)  # [B,k,HW]
    off = ~torch.eye(k, dtype=torch.bool)
    if variant == "pearson":
        z = maps - maps.mean(-1, keepdim=True)
        norm = z.norm(dim=-1, keepdim=True)
        z = z / torch.where(norm > 0, norm, torch.ones_like(norm))
        sim = z @ z.transpose(1, 2)
        sim = torch.where((norm > 0) & (norm > 0).transpose(1, 2), sim, torch.full_like(sim, math.nan))
    elif variant == "iou":
        n_top = max(1, round(top_fraction * maps.shape[-1]))
        m = (location_ranks(maps, "morf") < n_top).double()
        inter = m @ m.transpose(1, 2)
        sim = inter / (2 * n_top - inter)
    else:
        raise ValueError(f"unknown variant '{variant}'; choose 'pearson' or 'iou'")
    values = sim[:, off].nanmean(-1) if k > 1 else torch.full((maps.shape[0],), math.nan, dtype=torch.float64)
    return MetricResult("pairwise_class_similarity", values[:, None], "lower",
                        {"spec": "metrics.md §6", "k": k, "variant": variant, "level": level,
                         **({"top_fraction": top_fraction} if variant == "iou" else {})})


@register_metric("trait_precision", category="discriminative", needs=["model", "labels", "explainer", "trait_masks"],
                 outputs={"trait_ebpg": "higher", "contrast_ebpg": "higher", "class_ebpg": "higher"},
                 cost="one explanation call with K = 1 + #siblings", spec="metrics.md §6",
                 summary="TraitShapes: share of positive saliency on the part that tells the class from its sibling")
def trait_precision(
    model: Callable[[torch.Tensor], Any],
    images: torch.Tensor,
    labels: torch.Tensor,
    explainer: Callable[..., Any],
    siblings: torch.Tensor,
    disc_masks: torch.Tensor,
    class_masks: torch.Tensor,
    *,
    level: str = "raw",
) -> dict[str, MetricResult]:
    """TraitShapes discriminative precision (traitlens proposal, metrics.md §6). All ↑.

    For the image's class c and each sibling c′ (classes differing in exactly one trait slot) with discriminative
    mask M_{c,c′}: **trait_ebpg** = EBPG of s_c⁺ inside M_{c,c′}; **contrast_ebpg** = EBPG of (s_c − s_{c′})⁺ inside
    M_{c,c′}; **class_ebpg** = EBPG of s_c⁺ inside the class mask. Values average over the image's siblings with a
    non-empty mask. Maps are the un-normalised pixel maps (`level='raw'`) so s_c and s_{c′} share a scale.

    Args:
        labels: [B] the images' classes c.
        siblings: [B,S] sibling class ids, −1 for padding.
        disc_masks: [B,S,H,W] bool M_{c,c′}.
        class_masks: [B,H,W] bool.
    """
    B, S = siblings.shape
    targets = torch.cat([labels.long().view(-1, 1).cpu(), siblings.long().clamp_min(0).cpu()], 1)
    maps = _explain_maps(explainer, model, images, targets, level)
    s_c = maps[:, :1]
    pos = s_c.clamp_min(0)
    valid = (siblings.cpu() >= 0)
    dm = disc_masks.cpu().bool() & valid[..., None, None]
    trait = energy_share(pos.expand(B, S, *pos.shape[-2:]), dm)
    contrast = energy_share((s_c - maps[:, 1:]).clamp_min(0), dm)
    cls = energy_share(pos[:, 0], class_masks.cpu().bool())
    knobs = {"spec": "metrics.md §6", "level": level, "siblings": "all, averaged", "target": "label"}
    return {
        "trait_ebpg": MetricResult("trait_ebpg", trait.nanmean(1, keepdim=True), "higher", knobs),
        "contrast_ebpg": MetricResult("contrast_ebpg", contrast.nanmean(1, keepdim=True), "higher", knobs),
        "class_ebpg": MetricResult("class_ebpg", cls[:, None], "higher", knobs),
    }
