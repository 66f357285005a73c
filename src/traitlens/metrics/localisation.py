"""Localisation metrics (metrics.md §3). This module holds the WSOL box metrics (GT-known / Top-1 Loc, MaxBoxAcc,
MaxBoxAccV2) and PxAP (§3.4); the pointing game, energy pointing game and area size (`pointing`, §3.1, §3.2, §3.5)
and mask overlap (`overlap`, §3.3) are importable from here too.

None of them runs the model except the presets that skip or score by the prediction. Localisation targets are
masks [B,H,W] or [B,K,H,W] (object, class or TraitShapes trait masks) or per-image boxes, which rasterise to the
pixels whose centre lies inside. An empty target mask gives NaN (excluded from means, counted).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from traitlens.metrics._registry import MetricResult, register_aggregator, register_metric
from traitlens.metrics.inputs import explanation_parts, misclassified
from traitlens.metrics.masks import masks_for
from traitlens.metrics.overlap import mask_overlap
from traitlens.metrics.pointing import area_size, energy_pointing_game, energy_share, pointing_game
from traitlens.metrics.stats import minmax, nan_where
from traitlens.ops.components import component_boxes, connected_components

__all__ = [
    "CONTOUR_MODES",
    "area_size",
    "component_boxes",
    "connected_components",
    "energy_pointing_game",
    "energy_share",
    "hole_boxes",
    "mask_overlap",
    "pointing_game",
    "pxap",
    "wsol",
]

CONTOUR_MODES = ("outer", "tree")


def hole_boxes(binary: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounding rectangles of the hole contours OpenCV's `findContours(RETR_TREE)` reports for bool [N,H,W].

    OpenCV traces 8-connected foreground, so a hole is a 4-connected background component that does not touch the
    image edge (Suzuki & Abe 1985). Its contour runs through the foreground pixels 4-adjacent to it, and every
    pixel 4-adjacent to a hole is foreground, so the rectangle is the hole's bounding box grown by one pixel per side.

    Returns (owner [R] image index, boxes [R,4] long: xmin, ymin, xmax, ymax (inclusive)).
    """
    H, W = binary.shape[-2:]
    owner, boxes = component_boxes(connected_components(~binary, connectivity=4))
    enclosed = (boxes[:, 0] > 0) & (boxes[:, 1] > 0) & (boxes[:, 2] < W - 1) & (boxes[:, 3] < H - 1)
    grow = torch.tensor([-1, -1, 1, 1], dtype=boxes.dtype, device=boxes.device)
    return owner[enclosed], boxes[enclosed, :4] + grow


# ----------------------------------------------------------------------------- WSOL box metrics


def _box_iou_inclusive(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """wsolevaluation IoU with inclusive areas: a [...,4] vs b [...,4] (broadcast) x0,y0,x1,y1."""
    ix = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0]) + 1).clamp_min(0)
    iy = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1]) + 1).clamp_min(0)
    inter = ix * iy
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    return inter / (area_a + area_b - inter)


def _wsol_ious(s: torch.Tensor, gt: torch.Tensor, thresholds: np.ndarray,
               contours: str = "outer") -> tuple[torch.Tensor, torch.Tensor]:
    """Best IoU over all candidate boxes and IoU of the largest component, per threshold, for one map.

    s: [H,W] in [0,1]; gt: [n,4] integer boxes. Candidates are the components' boxes, plus the hole contours' boxes
    with `contours='tree'`. Components (and holes) are labelled once per distinct threshold level, never per τ.
    """
    H, W = s.shape
    u = (s.double().cpu().numpy() * 255).astype(np.uint8)  # reference: (scoremap * 255).astype(np.uint8)
    levels = np.array([int(t * u.max()) for t in thresholds])
    uniq, inv = np.unique(levels, return_inverse=True)
    binary = torch.from_numpy(u)[None] > torch.from_numpy(uniq.astype(np.int64)).view(-1, 1, 1)
    owner, boxes = component_boxes(connected_components(binary))
    rect_owner, rects = owner, boxes[:, :4]
    if contours == "tree":
        hole_owner, holes = hole_boxes(binary)
        rect_owner, rects = torch.cat([owner, hole_owner]), torch.cat([rects, holes])
    T = len(uniq)
    # reference box: [x, y, x+w, y+h] clamped to (W−1, H−1), i.e. (xmax+1, ymax+1) clamped
    est = torch.stack([rects[:, 0], rects[:, 1], (rects[:, 2] + 1).clamp(max=W - 1),
                       (rects[:, 3] + 1).clamp(max=H - 1)], 1).double()
    gtd = gt.double().view(-1, 4)
    zero_box = torch.zeros(1, 4, dtype=torch.float64)
    no_comp_iou = _box_iou_inclusive(zero_box[:, None], gtd[None]).max(-1).values.squeeze(0)
    best_all = torch.full((T,), float(no_comp_iou), dtype=torch.float64)
    best_large = best_all.clone()
    if owner.numel():  # holes exist only inside components
        rect_ious = _box_iou_inclusive(est[:, None], gtd[None]).max(-1).values  # [R] components first, then holes
        best_all = best_all.scatter_reduce(0, rect_owner, rect_ious, reduce="amax", include_self=False)
        ious = rect_ious[:len(owner)]
        # largest component by pixel count; ties go to the first component in label order
        counts = boxes[:, 4].double()
        max_count = torch.zeros(T, dtype=torch.float64).scatter_reduce(0, owner, counts, "amax", include_self=False)
        is_max = counts == max_count[owner]
        first = torch.full((T,), len(owner), dtype=torch.long).scatter_reduce(
            0, owner[is_max], torch.nonzero(is_max).squeeze(1), "amin", include_self=True)
        has = first < len(owner)
        best_large[has] = ious[first[has]]
    inv_t = torch.from_numpy(inv.reshape(-1).astype(np.int64))
    return best_all[inv_t], best_large[inv_t]


@register_aggregator("maxboxacc_v2")
def _agg_maxboxacc_v2(result: MetricResult) -> float:
    iou = result.extras["iou_all"].flatten(0, 1)
    keep = ~torch.isnan(result.values.flatten())
    if not keep.any():
        return math.nan
    deltas = result.knobs.get("iou_thresholds", (0.3, 0.5, 0.7))
    return float(torch.stack([(iou[keep] >= d).double().mean(0).max() for d in deltas]).mean() * 100)


@register_aggregator("maxboxacc")
def _agg_maxboxacc(result: MetricResult) -> float:
    iou = result.extras["iou_largest"].flatten(0, 1)
    keep = ~torch.isnan(result.values.flatten())
    if not keep.any():
        return math.nan
    return float((iou[keep] >= 0.5).double().mean(0).max() * 100)


@register_metric("wsol", category="localisation", needs=["boxes"],
                 outputs={"maxboxacc_v2": "higher", "maxboxacc": "higher", "gt_known_loc": "higher",
                          "top1_loc": "higher"},
                 cost="no forwards (Top-1 Loc: 1 forward); ≤ 256 component labellings per map (×2 for 'tree')",
                 spec="metrics.md §3.4", summary="WSOL box accuracy: MaxBoxAccV2, MaxBoxAcc, GT-known and Top-1 Loc")
def wsol(
    exp: Any,
    boxes: Sequence[torch.Tensor],
    *,
    model: Callable[[torch.Tensor], Any] | None = None,
    images: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    cam_curve_interval: float = 0.01,
    tau_fix: float = 0.2,
    iou_thresholds: Sequence[float] = (0.3, 0.5, 0.7),
    contours: str = "outer",
    level: str = "pixel",
    batch_size: int = 64,
) -> dict[str, MetricResult]:
    """WSOL metrics of Choe et al. 2020, `wsolevaluation` semantics (metrics.md §3.4). All ↑, ×100.

    The map (GT-class maps for GT-known; explain with target='label') is min-max normalised, u = uint8(255·s),
    binary = u > int(τ·max u); a component's box is [x, y, x+w, y+h] clamped to (W−1, H−1); no component gives
    [0,0,0,0]. GT boxes are int() of the given xyxy; IoU uses inclusive areas. BoxAcc(τ, δ) = mean over images of
    1[max_GT IoU ≥ δ]. MaxBoxAccV2 = mean_δ max_τ BoxAcc(τ, δ) with all components (best box per τ); MaxBoxAcc
    = max_τ BoxAcc(τ, 0.5) with the largest component (by pixel count; the reference's contour area can differ
    for thin components); GT-known Loc = BoxAcc(τ_fix, 0.5); Top-1 Loc additionally needs a correct top-1.
    τ grid = arange(0, 1, cam_curve_interval) (0.01: the evaluation command line).

    `contours` sets MaxBoxAccV2's candidate boxes: 'outer' (default) = the box of every 8-connected component,
    islands inside holes included (OpenCV's RETR_TREE outer contours; not RETR_EXTERNAL, which drops islands);
    'tree' adds the boxes of the hole contours, as the reference's `findContours(RETR_TREE)` does. The largest
    component (MaxBoxAcc, GT-known, Top-1) does not depend on it: a hole's contour never encloses more area
    than the outer contour of the component around it.
    """
    if contours not in CONTOUR_MODES:
        raise ValueError(f"unknown contours '{contours}'; choose from {CONTOUR_MODES}")
    maps, _ = explanation_parts(exp, level)
    B, K = maps.shape[:2]
    s, _ = minmax(maps.double())
    thresholds = np.arange(0, 1, cam_curve_interval)
    T = len(thresholds)
    iou_all = torch.full((B, K, T), math.nan, dtype=torch.float64)
    iou_large = iou_all.clone()
    for b in range(B):
        gt = torch.as_tensor(boxes[b], dtype=torch.float64).view(-1, 4).trunc()
        if gt.shape[0] == 0:
            continue
        for k in range(K):
            iou_all[b, k], iou_large[b, k] = _wsol_ious(s[b, k], gt, thresholds, contours)
    valid = ~torch.isnan(iou_all[..., 0])
    fix = int(np.argmin(np.abs(thresholds - tau_fix)))
    gt_known = nan_where((iou_large[..., fix] >= 0.5).double() * 100, ~valid)
    knobs = {"spec": "metrics.md §3.4", "cam_curve_interval": cam_curve_interval, "tau_fix": tau_fix,
             "iou_thresholds": list(iou_thresholds), "level": level, "largest": "pixel count",
             "contours": contours}
    extras = {"iou_all": iou_all, "iou_largest": iou_large}
    per_v2 = torch.stack([(iou_all >= d).double().amax(-1) for d in iou_thresholds]).mean(0) * 100
    out = {
        "maxboxacc_v2": MetricResult("maxboxacc_v2", nan_where(per_v2, ~valid), "higher", knobs, extras=extras,
                                     aggregate="maxboxacc_v2"),
        "maxboxacc": MetricResult("maxboxacc", nan_where((iou_large >= 0.5).double().amax(-1) * 100, ~valid),
                                  "higher", knobs, extras=extras, aggregate="maxboxacc"),
        "gt_known_loc": MetricResult("gt_known_loc", gt_known, "higher", knobs),
    }
    if labels is not None and (getattr(exp, "logits", None) is not None or (model is not None and images is not None)):
        wrong = misclassified(model, images, labels, exp, B, K, batch_size)
        top1 = torch.where(wrong, torch.zeros_like(gt_known), gt_known)
        out["top1_loc"] = MetricResult("top1_loc", top1, "higher", knobs)
    return out


# ----------------------------------------------------------------------------- PxAP


def _pxap_edges(step: float) -> np.ndarray:
    return np.concatenate([np.arange(0, 1, step), [1.0, 2.0, 3.0]])


def _pxap_from_hist(pos: np.ndarray, neg: np.ndarray) -> float:
    """wsolevaluation `MaskEvaluator.compute`: TP/FP accumulated from the highest bin down, ×100."""
    tp = pos[::-1].cumsum()
    fp = neg[::-1].cumsum()
    fn = pos.sum() - tp
    if (tp + fn <= 0).all():
        return math.nan
    nonzero = (tp + fp) != 0
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
    return float((precision[1:] * np.diff(recall))[nonzero[1:]].sum() * 100)


@register_aggregator("pxap")
def _agg_pxap(result: MetricResult) -> float:
    keep = ~torch.isnan(result.values)
    if not keep.any():
        return math.nan
    pos = result.extras["hist_pos"][keep].sum(0).numpy()
    neg = result.extras["hist_neg"][keep].sum(0).numpy()
    return _pxap_from_hist(pos, neg)


@register_metric("pxap", category="localisation", direction="higher", needs=["masks"], cost="no forwards",
                 spec="metrics.md §3.4", summary="Pixel average precision of the min-maxed map against masks (dataset)")
def pxap(
    exp: Any,
    masks: torch.Tensor | None = None,
    boxes: Sequence[torch.Tensor] | None = None,
    *,
    step: float = 0.01,
    ignore: torch.Tensor | None = None,
    level: str = "pixel",
) -> MetricResult:
    """PxAP (metrics.md §3.4; `wsolevaluation` MaskEvaluator). ↑, ×100, a dataset-level aggregate.

    Per-pixel histograms of min-maxed map values over GT-positive and GT-negative pixels (excluding `ignore`) with
    bin edges [0, step, …, 1−step, 1, 2, 3] are pooled over the dataset; TP and FP accumulate from the highest bin
    down, and **PxAP = Σ_l prec_l·(rec_l − rec_{l−1})** over points with TP+FP > 0. Per-sample values are per-map PxAP.
    """
    maps, _ = explanation_parts(exp, level)
    B, K, H, W = maps.shape
    s, _ = minmax(maps.double())
    gt = masks_for(masks, boxes, B, K, (H, W)).cpu()
    keep = torch.ones_like(gt) if ignore is None else ~ignore.bool().view(B, -1, H, W).expand_as(gt).cpu()
    edges = torch.from_numpy(_pxap_edges(step))
    nb = len(edges) - 1
    bins = (torch.bucketize(s.cpu().flatten(-2), edges, right=True) - 1).clamp(0, nb - 1)
    g, kp = gt.flatten(-2), keep.flatten(-2)
    pos = torch.zeros(B, K, nb, dtype=torch.float64).scatter_add_(-1, bins, (g & kp).double())
    neg = torch.zeros(B, K, nb, dtype=torch.float64).scatter_add_(-1, bins, (~g & kp).double())
    per = torch.tensor([[_pxap_from_hist(pos[b, k].numpy(), neg[b, k].numpy()) for k in range(K)] for b in range(B)],
                       dtype=torch.float64)
    return MetricResult("pxap", per, "higher", {"spec": "metrics.md §3.4", "step": step, "level": level},
                        extras={"hist_pos": pos, "hist_neg": neg}, aggregate="pxap")
