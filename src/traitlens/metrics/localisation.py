"""Localisation metrics (metrics.md §3): pointing game, energy pointing game, mask overlap (generic and the
AGCAM preset), the WSOL box metrics (GT-known / Top-1 Loc, MaxBoxAcc, MaxBoxAccV2), PxAP and area size.

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
import torch.nn.functional as F

from traitlens.metrics._common import (
    boxes_to_masks,
    connected_components,
    explanation_parts,
    location_ranks,
    masks_for,
    minmax,
    predict,
)
from traitlens.metrics._registry import MetricResult, register_aggregator, register_metric

__all__ = [
    "area_size",
    "component_boxes",
    "energy_pointing_game",
    "hole_boxes",
    "mask_overlap",
    "pointing_game",
    "pxap",
    "wsol",
]

_EPS_AGCAM = 1e-5
CONTOUR_MODES = ("outer", "tree")


def _nan_where(values: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    return torch.where(cond, torch.full_like(values, math.nan), values)


def _targets_or_dummy(targets: torch.Tensor | None, B: int, K: int) -> torch.Tensor:
    return targets.long().cpu() if targets is not None else torch.full((B, K), -1, dtype=torch.long)


# ----------------------------------------------------------------------------- pointing game


def _dilate(masks: torch.Tensor, tol: float) -> torch.Tensor:
    """Pixels at squared distance strictly < tol² from some mask pixel (tol = 0: the mask itself)."""
    if tol <= 0:
        return masks
    r = math.ceil(tol) - 1 if float(tol).is_integer() else math.floor(tol)
    d = torch.arange(-r, r + 1, dtype=torch.float64)
    disk = ((d[:, None] ** 2 + d[None, :] ** 2) < tol**2).double()
    lead, (H, W) = masks.shape[:-2], masks.shape[-2:]
    out = F.conv2d(masks.reshape(-1, 1, H, W).double(), disk.view(1, 1, *disk.shape).to(masks.device), padding=r)
    return (out > 0.5).view(*lead, H, W)


@register_aggregator("macro_classes")
def _macro_classes(result: MetricResult) -> float:
    """Per-class mean over (image, target) samples of that class, then the mean over classes (TorchRay 'macro')."""
    v, c = result.values.flatten(), result.extras["classes"].flatten()
    keep = ~torch.isnan(v)
    v, c = v[keep], c[keep]
    if v.numel() == 0:
        return math.nan
    classes = c.unique()
    return float(torch.stack([v[c == k].mean() for k in classes]).mean())


@register_metric("pointing_game", category="localisation", direction="higher", needs=["masks"],
                 cost="no forwards", spec="metrics.md §3.1",
                 summary="Is the map's maximum within tol px of the target mask? (macro mean over classes)")
def pointing_game(
    exp: Any,
    masks: torch.Tensor | None = None,
    boxes: Sequence[torch.Tensor] | None = None,
    *,
    tol: float = 15,
    ties: str = "first",
    aggregate: str = "macro",
    level: str = "pixel",
) -> MetricResult:
    """Pointing game (Zhang et al. 2016; TorchRay) (metrics.md §3.1). ↑.

    The point is the first maximal pixel in row-major order (`torch.argmax`); it is a hit iff some target pixel
    lies at squared distance **strictly** < tol² (tol = 0: the point lies inside the mask). `ties='any'` counts a
    hit if any maximal pixel qualifies (Quantus). The aggregate is the per-class accuracy averaged over classes
    ('macro', TorchRay's default) or pooled ('micro').

    Args:
        exp: `Explanation` or raw map tensor [B,(K,)H,W].
        masks: [B,H,W] or [B,K,H,W] bool targets; or `boxes` (per image [n,4] xyxy).
        tol: tolerance in pixels (TorchRay: 15).
    """
    maps, targets = explanation_parts(exp, level)
    B, K, H, W = maps.shape
    m = masks_for(masks, boxes, B, K, (H, W)).to(maps.device)
    near = _dilate(m, tol).flatten(-2)
    flat = maps.flatten(-2)
    if ties == "first":
        hit = near.gather(-1, flat.argmax(-1, keepdim=True)).squeeze(-1)
    elif ties == "any":
        hit = ((flat == flat.max(-1, keepdim=True).values) & near).any(-1)
    else:
        raise ValueError(f"unknown ties '{ties}'; choose 'first' or 'any'")
    if aggregate not in ("macro", "micro"):
        raise ValueError(f"unknown aggregate '{aggregate}'; choose 'macro' or 'micro'")
    values = _nan_where(hit.double(), ~m.flatten(-2).any(-1))
    return MetricResult("pointing_game", values, "higher",
                        {"spec": "metrics.md §3.1", "tol": tol, "ties": ties, "aggregate": aggregate, "level": level},
                        extras={"classes": _targets_or_dummy(targets, B, K)},
                        aggregate="macro_classes" if aggregate == "macro" else "mean")


# ----------------------------------------------------------------------------- energy pointing game


def _signed(maps: torch.Tensor, sign: str) -> torch.Tensor:
    if sign == "minmax":
        return minmax(maps.double())[0]
    if sign == "positive":
        return maps.double().clamp_min(0)
    raise ValueError(f"unknown sign '{sign}'; choose 'minmax' or 'positive'")


def energy_share(s: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Σ_{p∈G} s(p) / Σ_p s(p) for non-negative s [...,H,W] and bool G; NaN when Σ s = 0 or G is empty."""
    total = s.flatten(-2).sum(-1)
    inside = (s * region).flatten(-2).sum(-1)
    out = inside / torch.where(total > 0, total, torch.ones_like(total))
    return _nan_where(out, (total <= 0) | ~region.flatten(-2).any(-1))


@register_metric("energy_pointing_game", category="localisation", direction="higher", needs=["masks"],
                 cost="no forwards", spec="metrics.md §3.2",
                 summary="Share of the (min-maxed) map's energy inside the target region")
def energy_pointing_game(
    exp: Any,
    masks: torch.Tensor | None = None,
    boxes: Sequence[torch.Tensor] | None = None,
    *,
    sign: str = "minmax",
    region: str = "union",
    level: str = "pixel",
) -> MetricResult:
    """Energy-based pointing game (Score-CAM) (metrics.md §3.2). ↑.

    s ← minmax(s) (`sign='minmax'`, the reference) or max(s, 0) ('positive', for signed maps);
    **EBPG = Σ_{p∈G} s(p) / Σ_p s(p)** with G the union of the target boxes / the mask (`region='union'`) or the
    best single box (`'best_box'`, SCOUTER's "precision"). Σ s = 0 gives NaN. Report beside `area_size`.
    """
    maps, _ = explanation_parts(exp, level)
    B, K, H, W = maps.shape
    s = _signed(maps, sign)
    if region == "union":
        values = energy_share(s, masks_for(masks, boxes, B, K, (H, W)).to(s.device))
    elif region == "best_box":
        if boxes is None:
            raise ValueError("region='best_box' needs boxes")
        values = torch.full((B, K), math.nan, dtype=torch.float64)
        for b, bx in enumerate(boxes):
            bx = torch.as_tensor(bx).view(-1, 4)
            if bx.shape[0]:
                single = boxes_to_masks([box[None] for box in bx], (H, W)).to(s.device)  # [n,H,W]
                shares = energy_share(s[b][:, None], single[None])  # [K,n]
                values[b] = torch.nan_to_num(shares, nan=-math.inf).max(-1).values.cpu()
        values = _nan_where(values, torch.isinf(values))
    else:
        raise ValueError(f"unknown region '{region}'; choose 'union' or 'best_box'")
    return MetricResult("energy_pointing_game", values, "higher",
                        {"spec": "metrics.md §3.2", "sign": sign, "region": region, "level": level})


@register_metric("area_size", category="localisation", direction="none", needs=[], cost="no forwards",
                 spec="metrics.md §3.5", summary="Mean of the min-maxed map: the fraction of 'lit' area (report only)")
def area_size(exp: Any, *, level: str = "pixel") -> MetricResult:
    """SCOUTER's area size (metrics.md §3.5): mean of the min-max-normalised map. No direction (smaller = more
    concise); report it beside EBPG and mask overlap. A constant map gives NaN."""
    maps, _ = explanation_parts(exp, level)
    s, degenerate = minmax(maps.double())
    return MetricResult("area_size", _nan_where(s.flatten(-2).mean(-1), degenerate), "none",
                        {"spec": "metrics.md §3.5", "level": level})


# ----------------------------------------------------------------------------- mask overlap


def component_boxes(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounding boxes of labelled components of [N,H,W] (0 = background).

    Returns (owner [R] image index, boxes [R,5] long: xmin, ymin, xmax, ymax (inclusive), pixel count), ordered by
    (image, label).
    """
    N, H, W = labels.shape
    flat = labels.reshape(N, -1)
    n_idx, pix = torch.nonzero(flat, as_tuple=True)
    if n_idx.numel() == 0:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, 5, dtype=torch.long)
    key = n_idx * (H * W + 1) + flat[n_idx, pix]
    uniq, inv = torch.unique(key, return_inverse=True)
    R = uniq.numel()
    ys, xs = pix // W, pix % W

    def red(v: torch.Tensor, how: str) -> torch.Tensor:
        init = torch.full((R,), H * W if how == "amin" else -1, dtype=torch.long, device=labels.device)
        return init.scatter_reduce(0, inv, v, reduce=how, include_self=True)

    count = torch.zeros(R, dtype=torch.long, device=labels.device).scatter_add_(0, inv, torch.ones_like(inv))
    boxes = torch.stack([red(xs, "amin"), red(ys, "amin"), red(xs, "amax"), red(ys, "amax"), count], 1)
    return uniq // (H * W + 1), boxes


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
        return _nan_where(num / torch.where(den > 0, den, torch.ones_like(den)), den <= 0)

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
        wrong = _misclassified(model, images, labels, exp, B, K, batch_size)
        scores = {k: _nan_where(v, wrong) for k, v in scores.items()}
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
        scores = {k: _nan_where(v, empty) for k, v in scores.items()}
        knobs["tau"] = tau
    else:
        raise ValueError(f"unknown mask_overlap preset '{preset}'; choose None or 'agcam'")
    return {name: MetricResult(name, v, "higher", knobs) for name, v in scores.items()}


def _misclassified(model: Any, images: torch.Tensor | None, labels: torch.Tensor | None, exp: Any,
                   B: int, K: int, batch_size: int) -> torch.Tensor:
    if labels is None:
        raise ValueError("preset 'agcam' needs labels to skip misclassified images")
    logits = getattr(exp, "logits", None)
    if logits is None:
        if model is None or images is None:
            raise ValueError("preset 'agcam' needs the model and images (or exp.logits) for the predictions")
        logits = predict(model, images, batch_size)
    wrong = logits.argmax(-1).cpu() != labels.long().cpu()
    return wrong.view(B, 1).expand(B, K)


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
    gt_known = _nan_where((iou_large[..., fix] >= 0.5).double() * 100, ~valid)
    knobs = {"spec": "metrics.md §3.4", "cam_curve_interval": cam_curve_interval, "tau_fix": tau_fix,
             "iou_thresholds": list(iou_thresholds), "level": level, "largest": "pixel count",
             "contours": contours}
    extras = {"iou_all": iou_all, "iou_largest": iou_large}
    per_v2 = torch.stack([(iou_all >= d).double().amax(-1) for d in iou_thresholds]).mean(0) * 100
    out = {
        "maxboxacc_v2": MetricResult("maxboxacc_v2", _nan_where(per_v2, ~valid), "higher", knobs, extras=extras,
                                     aggregate="maxboxacc_v2"),
        "maxboxacc": MetricResult("maxboxacc", _nan_where((iou_large >= 0.5).double().amax(-1) * 100, ~valid),
                                  "higher", knobs, extras=extras, aggregate="maxboxacc"),
        "gt_known_loc": MetricResult("gt_known_loc", gt_known, "higher", knobs),
    }
    if labels is not None and (getattr(exp, "logits", None) is not None or (model is not None and images is not None)):
        wrong = _misclassified(model, images, labels, exp, B, K, batch_size)
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
