"""Mask overlap of the thresholded map with the target (metrics.md §3.3): IoU, Dice, precision, recall and pixel
accuracy, generic and with the AGCAM preset."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from traitlens.metrics._registry import MetricResult, register_metric
from traitlens.metrics.inputs import explanation_parts, misclassified
from traitlens.metrics.masks import masks_for
from traitlens.metrics.ranking import location_ranks
from traitlens.metrics.stats import minmax, nan_where
from traitlens.ops.components import component_boxes, connected_components

__all__ = ["mask_overlap"]

_EPS_AGCAM = 1e-5


def _rects_union(owner: torch.Tensor, boxes: torch.Tensor, N: int, H: int, W: int) -> torch.Tensor:
    """Union of the AGCAM reference rectangles [y : y+h+1, x : x+w+1] (1 px larger), per image → [N,H,W]."""
    if owner.numel() == 0:
        return torch.zeros(N, H, W, dtype=torch.bool)
    ys = torch.arange(H)[None, :, None]
    xs = torch.arange(W)[None, None, :]
    b = boxes.cpu()
    inside = ((ys >= b[:, 1, None, None]) & (ys <= b[:, 3, None, None] + 1)
              & (xs >= b[:, 0, None, None]) & (xs <= b[:, 2, None, None] + 1))
    return torch.zeros(N, H, W, dtype=torch.long).index_add_(0, owner.cpu(), inside.long()) > 0


def _int_boxes_mask(boxes: Sequence[torch.Tensor], H: int, W: int) -> torch.Tensor:
    """AGCAM's GT mask: the union of int() boxes filled inclusively [ymin:ymax+1, xmin:xmax+1]."""
    out = torch.zeros(len(boxes), H, W, dtype=torch.bool)
    for i, bx in enumerate(boxes):
        for x0, y0, x1, y1 in torch.as_tensor(bx, dtype=torch.float64).view(-1, 4).tolist():
            out[i, int(y0):int(y1) + 1, int(x0):int(x1) + 1] = True
    return out


def _overlap_scores(pred: torch.Tensor, gt: torch.Tensor, eps: float = 0.0) -> dict[str, torch.Tensor]:
    """IoU, Dice, precision, recall, pixel accuracy of bool [...,H,W] pairs; an empty denominator gives NaN
    (with eps > 0, the AGCAM reference's smoothed ratios instead)."""
    p, g = pred.flatten(-2), gt.flatten(-2)
    tp = (p & g).sum(-1).double()
    fp = (p & ~g).sum(-1).double()
    fn = (~p & g).sum(-1).double()
    tn = (~p & ~g).sum(-1).double()

    def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        if eps:
            return (num + eps) / (den + eps)
        return nan_where(num / torch.where(den > 0, den, torch.ones_like(den)), den <= 0)

    return {"iou": ratio(tp, tp + fp + fn), "dice": ratio(2 * tp, 2 * tp + fp + fn), "precision": ratio(tp, tp + fp),
            "recall": ratio(tp, tp + fn), "pixel_acc": ratio(tp + tn, tp + tn + fp + fn)}


_OVERLAP_OUTPUTS = {"iou": "higher", "dice": "higher", "precision": "higher", "recall": "higher",
                    "pixel_acc": "higher"}


@register_metric("mask_overlap", category="localisation", needs=["masks"], outputs=_OVERLAP_OUTPUTS,
                 cost="no forwards (preset 'agcam': 1 forward to skip misclassified images)", spec="metrics.md §3.3",
                 summary="IoU / Dice / precision / recall / pixel accuracy of the thresholded map vs the target mask")
def mask_overlap(
    exp: Any,
    masks: torch.Tensor | None = None,
    boxes: Sequence[torch.Tensor] | None = None,
    *,
    tau: float | str | None = 0.5,
    preset: str | None = None,
    model: Callable[[torch.Tensor], Any] | None = None,
    images: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    tie_break: str = "index",
    level: str = "pixel",
    batch_size: int = 64,
) -> dict[str, MetricResult]:
    """Mask overlap of the thresholded map with the target (metrics.md §3.3). All ↑.

    Generic: s min-max normalised, **P = {p : s(p) > τ}** (strict). τ = 0.5 (default), 'mean' (the map mean),
    'area' (the top-|G| pixels, area-matched, §0 tie rule) or 'max_iou' (τ ∈ {0, 0.01, …, 0.99} chosen per
    sample for the best IoU — optimistic, recorded as such). IoU = TP/(TP+FP+FN), Dice = 2TP/(2TP+FP+FN),
    precision = TP/(TP+FP), recall = TP/(TP+FN), pixel accuracy = (TP+TN)/HW; an empty denominator gives NaN.

    Preset 'agcam' (the AGCAM repository's `localization.py`, a box-vs-mask overlap, not BoxAcc): the map must be
    for the predicted class; misclassified images give NaN (needs `model`, `images`, `labels`, or `exp.logits`).
    Map = min-max(bilinear(patch_maps)), binarised > τ (τ=None: the map mean); the prediction is the union of the
    bounding rectangles of its 8-connected components, each filled 1 px larger as in the reference; the GT is the
    union of int() boxes filled inclusively (or `masks`); ratios use ε = 1e-5: IoU = (TP+ε)/(TP+FP+FN+ε), ...
    """
    maps, _ = explanation_parts(exp, level)
    B, K, H, W = maps.shape
    knobs: dict[str, Any] = {"spec": "metrics.md §3.3", "preset": preset, "level": level}
    if preset == "agcam":
        if not isinstance(exp, torch.Tensor):
            up = F.interpolate(exp.patch_maps.reshape(B * K, 1, *exp.patch_maps.shape[-2:]).double(), size=(H, W),
                               mode="bilinear", align_corners=False)
            maps = up.view(B, K, H, W)
        s, _ = minmax(maps.double())
        thr = s.flatten(-2).mean(-1)[..., None, None] if tau is None else torch.as_tensor(tau, dtype=torch.float64)
        binary = (s > thr).cpu()
        owner, cboxes = component_boxes(connected_components(binary.view(B * K, H, W)))
        pred = _rects_union(owner, cboxes, B * K, H, W).view(B, K, H, W)
        gt = _int_boxes_mask(boxes, H, W)[:, None].expand(B, K, H, W) if boxes is not None and masks is None \
            else masks_for(masks, boxes, B, K, (H, W)).cpu()
        scores = _overlap_scores(pred, gt, eps=_EPS_AGCAM)
        wrong = misclassified(model, images, labels, exp, B, K, batch_size)
        scores = {k: nan_where(v, wrong) for k, v in scores.items()}
        knobs.update(tau=tau if tau is not None else "mean", eps=_EPS_AGCAM, maps="bilinear+minmax of patch_maps",
                     prediction="union of component rectangles (+1 px)", skip="misclassified images (NaN)")
    elif preset is None:
        s, _ = minmax(maps.double())
        gt = masks_for(masks, boxes, B, K, (H, W)).to(s.device)
        if tau == "max_iou":
            grid = torch.arange(100, dtype=torch.float64) / 100
            sweep = _overlap_scores(s[..., None, :, :] > grid.view(-1, 1, 1), gt[..., None, :, :])
            best = torch.nan_to_num(sweep["iou"], nan=-1.0).argmax(-1, keepdim=True)
            scores = {k: v.gather(-1, best).squeeze(-1) for k, v in sweep.items()}
            knobs["optimistic"] = "tau chosen per sample for the best IoU"
        else:
            if tau == "mean":
                pred = s > s.flatten(-2).mean(-1)[..., None, None]
            elif tau == "area":
                ranks = location_ranks(s.flatten(-2), "morf", tie_break).view_as(s)
                pred = ranks < gt.flatten(-2).sum(-1)[..., None, None]
                knobs["tie_break"] = tie_break
            elif isinstance(tau, (int, float)):
                pred = s > tau
            else:
                raise ValueError(f"unknown tau {tau!r}; a float, 'mean', 'area' or 'max_iou'")
            scores = _overlap_scores(pred, gt)
        empty = ~gt.flatten(-2).any(-1)
        scores = {k: nan_where(v, empty) for k, v in scores.items()}
        knobs["tau"] = tau
    else:
        raise ValueError(f"unknown mask_overlap preset '{preset}'; choose None or 'agcam'")
    return {name: MetricResult(name, v, "higher", knobs) for name, v in scores.items()}
