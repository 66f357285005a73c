"""Per-batch inputs of `evaluate`: the classes to explain (label, prediction, least similar class, every present
class) and the `MetricInputs` of one request, with the masks of its mask source (metrics.md §0, §3.1, §6)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn

from traitlens.evaluation._data import Batch, TraitInfo
from traitlens.evaluation.lsc import LscRule, lsc_targets
from traitlens.evaluation.requests import MetricRequest
from traitlens.explain import Explanation
from traitlens.metrics import MetricInputs

__all__ = ["batch_targets", "metric_inputs"]


def batch_targets(target: str, lsc: LscRule | None, model: nn.Module, x: torch.Tensor, batch: Batch,
                  traits: TraitInfo | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The classes to explain ([B] or [B,K]; None lets the explainer take its top-1) and, when every present class
    of multi-label images is a target, the [B,K] bool mask of padded slots."""
    if target == "pred":
        return None, None
    if target == "lsc":
        table = traits.class_traits if traits is not None else None
        return lsc_targets(model, x, lsc if lsc is not None else "min_logit", batch.labels, table), None
    if batch.present is not None:  # multi-label
        pad = batch.present < 0
        # a padded slot repeats the image's first present class (explainers need valid ids); its score is dropped
        filled = torch.where(pad, batch.present[:, :1].clamp_min(0), batch.present)
        return filled.to(x.device), pad
    return (batch.labels.to(x.device) if batch.labels is not None else None), None


def metric_inputs(req: MetricRequest, model: nn.Module, x: torch.Tensor, exp: Explanation, batch: Batch,
                  explainer: Callable[[nn.Module, torch.Tensor, Any], Explanation], per_class: bool) -> MetricInputs:
    """What `req`'s metric reads on this batch; `per_class`: the targets are every present class (multi-label)."""
    masks, e, boxes = batch.masks, exp, batch.boxes
    src = req.source or "object"
    if per_class:  # one mask per present class, aligned with the explained targets; boxes mix classes
        masks = _class_box_masks(batch) if src == "box" else batch.present_masks
        boxes = None
    elif "masks" in req.info.needs:
        if src == "box":
            masks = None  # metrics rasterise the boxes themselves
        elif src == "class":
            masks = batch.class_masks
        elif src == "trait":
            masks = batch.disc_masks
            e = _expand(exp, _required(masks, "disc_masks").shape[1])
    # Metrics prefer masks over boxes when both are given; boxes still serve box-only options (best_box, WSOL).
    return MetricInputs(model=model, images=x, exp=e, labels=batch.labels, masks=masks, boxes=boxes,
                        part_masks=batch.part_masks, explainer=explainer, indices=batch.indices,
                        siblings=batch.siblings, disc_masks=batch.disc_masks, class_masks=batch.class_masks)


def _required(value: Any, name: str) -> Any:
    """`value`, which `unmet_need` has already checked is present."""
    if value is None:
        raise ValueError(f"the batch has no {name}")
    return value


def _expand(exp: Explanation, S: int) -> Explanation:
    """The K = 1 explanation repeated over S sibling slots, so each (image, sibling) pair is a sample."""
    if exp.maps.shape[1] != 1:
        raise ValueError("mask source 'trait' needs one target per image (K = 1)")
    B = exp.maps.shape[0]
    extras = dict(exp.extras)
    if "raw_pixel_maps" in extras:
        extras["raw_pixel_maps"] = extras["raw_pixel_maps"].expand(B, S, *extras["raw_pixel_maps"].shape[-2:])
    return replace(exp, maps=exp.maps.expand(B, S, *exp.maps.shape[-2:]),
                   patch_maps=exp.patch_maps.expand(B, S, *exp.patch_maps.shape[-2:]),
                   targets=exp.targets.expand(B, S), head_maps=None, extras=extras)


def _class_box_masks(batch: Batch) -> torch.Tensor:
    """[B,K,H,W]: per present class the rasterised union of its boxes (multi-label, mask source 'box')."""
    from traitlens.metrics import boxes_to_masks

    present, boxes, box_labels = (_required(batch.present, "present classes"), _required(batch.boxes, "boxes"),
                                  _required(batch.box_labels, "box_labels"))
    B, K = present.shape
    H, W = batch.images01.shape[-2:]
    out = torch.zeros(B, K, H, W, dtype=torch.bool)
    for b in range(B):
        for k, c in enumerate(present[b].tolist()):
            if c >= 0:
                out[b, k] = boxes_to_masks([boxes[b][box_labels[b] == c]], (H, W))[0]
    return out
