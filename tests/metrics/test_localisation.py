"""Localisation metrics (metrics.md §3): pointing game, EBPG, mask overlap (+ 'agcam'), WSOL, PxAP, area size."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from traitlens.metrics import (
    area_size,
    boxes_to_masks,
    connected_components,
    energy_pointing_game,
    localisation,
    mask_overlap,
    pointing_game,
    pxap,
    wsol,
)
from traitlens.metrics._registry import MetricResult
from traitlens.metrics.localisation import component_boxes, hole_boxes


def test_pointing_game_tolerance_oracle():
    m = torch.zeros(1, 5, 5)
    m[0, 2, 2] = 1
    mask = torch.zeros(1, 5, 5, dtype=torch.bool)
    mask[0, 2, 4] = True
    assert pointing_game(m, mask, tol=3).values.item() == 1  # 4 < 9
    assert pointing_game(m, mask, tol=2).values.item() == 0  # 4 < 4 is false
    assert pointing_game(m, mask, tol=0).values.item() == 0  # tol 0: the point itself must be inside
    mask[0, 2, 2] = True
    assert pointing_game(m, mask, tol=0).values.item() == 1


def test_pointing_game_ties_first_vs_any_and_empty_mask():
    m = torch.zeros(1, 4, 4)
    m[0, 0, 0] = m[0, 3, 3] = 1  # two maxima; argmax takes the first in row-major order
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 3, 3] = True
    assert pointing_game(m, mask, tol=0).values.item() == 0
    assert pointing_game(m, mask, tol=0, ties="any").values.item() == 1
    empty = pointing_game(m, torch.zeros(1, 4, 4, dtype=torch.bool))
    assert math.isnan(empty.values.item()) and empty.n_nan == 1


def test_pointing_game_macro_vs_micro():
    # class 0: 3 hits out of 3; class 1: 0 of 1 → macro 0.5, micro 0.75
    values = torch.tensor([[1.0], [1.0], [1.0], [0.0]])
    r = MetricResult("pointing_game", values, "higher", extras={"classes": torch.tensor([[0], [0], [0], [1]])},
                     aggregate="macro_classes")
    assert r.value == pytest.approx(0.5)
    assert MetricResult("pointing_game", values, "higher").value == pytest.approx(0.75)


def test_hand_map_covering_mask_gets_full_pointing_and_energy():
    mask = torch.zeros(2, 16, 16, dtype=torch.bool)
    mask[0, 3:7, 5:9] = True
    mask[1, 10:14, 1:4] = True
    maps = mask.double()[:, None]
    assert pointing_game(maps, mask, tol=0).value == 1.0
    assert energy_pointing_game(maps, mask).value == 1.0
    overlap = mask_overlap(maps, mask)
    assert overlap["iou"].value == 1.0 and overlap["dice"].value == 1.0
    assert pxap(maps, mask).value == pytest.approx(100.0)


def test_ebpg_oracle_and_options():
    m = torch.tensor([[[1.0, 0.0], [0.5, 0.5]]])
    box = [torch.tensor([[0.0, 0.0, 1.0, 1.0]])]  # the top-left pixel
    assert boxes_to_masks(box, (2, 2)).tolist() == [[[True, False], [False, False]]]
    assert energy_pointing_game(m, boxes=box).value == pytest.approx(0.5)
    signed = torch.tensor([[[1.0, -3.0], [1.0, 0.0]]])
    assert energy_pointing_game(signed, boxes=box, sign="positive").value == pytest.approx(0.5)
    assert math.isnan(energy_pointing_game(torch.zeros(1, 2, 2), boxes=box).value)  # Σ s = 0
    two = [torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 1.0, 2.0, 2.0]])]
    assert energy_pointing_game(m, boxes=two, region="best_box").value == pytest.approx(0.5)
    assert energy_pointing_game(m, boxes=two).value == pytest.approx(1.0)


def test_mask_overlap_oracle_and_agcam_epsilon():
    # prediction {a, b, c} vs GT {a, b, d}: TP 2, FP 1, FN 1, TN 0 on a 1×4 map
    s = torch.tensor([[[0.9, 0.8, 0.7, 0.0]]])
    gt = torch.tensor([[[True, True, False, True]]])
    r = mask_overlap(s, gt, tau=0.5)
    assert r["iou"].value == pytest.approx(0.5)
    assert r["dice"].value == pytest.approx(2 / 3)
    assert r["precision"].value == pytest.approx(2 / 3)
    assert r["recall"].value == pytest.approx(2 / 3)
    assert r["pixel_acc"].value == pytest.approx(0.5)
    area = mask_overlap(s, gt, tau="area")  # top-|G| = 3 pixels
    assert area["iou"].value == pytest.approx(0.5)
    best = mask_overlap(s, gt, tau="max_iou")
    assert best["iou"].value >= 0.5 and "optimistic" in best["iou"].knobs
    empty = mask_overlap(torch.zeros(1, 1, 4), gt)
    assert math.isnan(empty["precision"].value)  # TP + FP = 0
    # AGCAM preset: one component {(0,0),(0,1)} → rectangle filled 1 px larger: rows 0..1, cols 0..2
    s2 = torch.zeros(1, 1, 4, 4)
    s2[0, 0, 0, :2] = 1
    gt_box = [torch.tensor([[0.0, 0.0, 1.0, 1.0]])]  # int box filled inclusively: rows 0..1, cols 0..1
    logits = torch.tensor([[2.0, 0.0]])
    model = lambda x: logits.expand(x.shape[0], -1)  # noqa: E731
    agc = mask_overlap(s2, boxes=gt_box, preset="agcam", model=model, images=torch.zeros(1, 3, 4, 4),
                       labels=torch.tensor([0]))
    eps = 1e-5  # pred 6 px, GT 4 px, TP 4, FP 2, FN 0
    assert agc["iou"].value == pytest.approx((4 + eps) / (6 + eps))
    assert agc["precision"].value == pytest.approx((4 + eps) / (6 + eps))
    assert agc["recall"].value == pytest.approx((4 + eps) / (4 + eps))
    wrong = mask_overlap(s2, boxes=gt_box, preset="agcam", model=model, images=torch.zeros(1, 3, 4, 4),
                         labels=torch.tensor([1]))
    assert math.isnan(wrong["iou"].value)  # misclassified images are skipped


def test_connected_components_8_connectivity_against_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    g = torch.Generator().manual_seed(0)
    binary = torch.rand(5, 20, 23, generator=g) > 0.55
    labels = connected_components(binary)
    for b in range(5):
        ref, n = ndimage.label(binary[b].numpy(), structure=np.ones((3, 3)))
        ours = labels[b].numpy()
        assert len(np.unique(ours[ours > 0])) == n
        # same partition: a bijection between labels
        pairs = {(int(a), int(c)) for a, c in zip(ours.ravel(), ref.ravel(), strict=True)}
        assert len(pairs) == n + 1
    snake = torch.zeros(1, 9, 9, dtype=torch.bool)
    snake[0, ::2, :] = True
    snake[0, 1::4, 8] = True
    snake[0, 3::4, 0] = True
    assert connected_components(snake).unique().numel() == 2  # one long component + background


def test_connected_components_4_connectivity_against_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")  # its default structure is the 4-connected cross
    g = torch.Generator().manual_seed(1)
    binary = torch.rand(5, 17, 21, generator=g) > 0.45
    labels = connected_components(binary, connectivity=4)
    for b in range(5):
        ref, n = ndimage.label(binary[b].numpy())
        pairs = {(int(a), int(c)) for a, c in zip(labels[b].numpy().ravel(), ref.ravel(), strict=True)}
        assert len(pairs) == n + 1  # same partition
    diagonal = torch.eye(4, dtype=torch.bool)[None]
    assert connected_components(diagonal, connectivity=4).unique().numel() == 5  # 4 pixels + background
    assert connected_components(diagonal).unique().numel() == 2
    with pytest.raises(ValueError, match="connectivity"):
        connected_components(diagonal, connectivity=6)


def test_component_boxes_and_opencv_rectangles():
    binary = torch.zeros(1, 8, 8, dtype=torch.bool)
    binary[0, 1:3, 2:6] = True
    binary[0, 6, 7] = True
    owner, boxes = component_boxes(connected_components(binary))
    assert owner.tolist() == [0, 0]
    assert boxes.tolist() == [[2, 1, 5, 2, 8], [7, 6, 7, 6, 1]]
    cv2 = pytest.importorskip("cv2")
    contours = cv2.findContours(binary[0].numpy().astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
    rects = sorted(cv2.boundingRect(c) for c in contours)
    ours = sorted((int(b[0]), int(b[1]), int(b[2] - b[0] + 1), int(b[3] - b[1] + 1)) for b in boxes)
    assert rects == ours


def test_wsol_box_indicator_gives_100_and_levels():
    gt = [torch.tensor([[5.0, 7.0, 15.0, 17.0]])]  # a 10×10 box (x1 = x + w) in 32×32
    m = boxes_to_masks(gt, (32, 32)).double()[:, None]
    out = wsol(m, gt)
    assert out["maxboxacc_v2"].value == pytest.approx(100.0)
    assert out["maxboxacc"].value == pytest.approx(100.0)
    assert out["gt_known_loc"].value == pytest.approx(100.0)
    assert "top1_loc" not in out  # needs labels and predictions
    off = torch.zeros(1, 1, 32, 32)
    off[0, 0, 25:, 25:] = 1
    assert wsol(off, gt)["maxboxacc_v2"].value == 0.0
    # two blobs: the largest component misses, another component hits → MaxBoxAcc 0, V2 (all components) > 0
    two = torch.zeros(1, 1, 32, 32)
    two[0, 0, 7:17, 5:15] = 0.9
    two[0, 0, 20:32, 18:32] = 1.0
    res = wsol(two, gt)
    assert res["maxboxacc"].value == 0.0 and res["maxboxacc_v2"].value > 0


def test_pxap_perfect_constant_and_dataset_level():
    mask = torch.zeros(3, 10, 10, dtype=torch.bool)
    mask[:, 2:5, 2:6] = True
    assert pxap(mask.double()[:, None], mask).value == pytest.approx(100.0)
    const = pxap(torch.ones(3, 1, 10, 10), mask)
    assert const.value == pytest.approx(100 * 12 / 100)
    # dataset-level: the aggregate pools histograms, it is not the mean of per-image values
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 1, 10, 10, generator=g) + mask[:, None] * torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1, 1)
    r = pxap(maps, mask)
    assert r.aggregate == "pxap" and r.values.shape == (3, 1)
    assert r.value != pytest.approx(float(r.values.mean()))
    assert MetricResult.concat([r.select([0, 1]), r.select([2])]).value == pytest.approx(r.value)


def test_area_size():
    m = torch.zeros(1, 4, 4)
    m[0, :2] = 1
    assert area_size(m).value == pytest.approx(0.5)
    assert math.isnan(area_size(torch.ones(1, 4, 4)).value)


def test_wsol_largest_component_by_pixel_count_differs_from_contour_area_on_thin_blobs():
    # a 1-px-wide line (20 px, contour area 0) and a compact 4×4 blob (16 px, contour area 9)
    m = torch.zeros(1, 1, 32, 32)
    m[0, 0, 2, 2:22] = 1.0
    m[0, 0, 20:24, 20:24] = 1.0
    line_box = [torch.tensor([[2.0, 2.0, 22.0, 3.0]])]
    blob_box = [torch.tensor([[20.0, 20.0, 24.0, 24.0]])]
    # ours takes the largest component by pixel count: the line
    assert wsol(m, line_box)["maxboxacc"].value == 100.0
    assert wsol(m, blob_box)["maxboxacc"].value == 0.0
    assert wsol(m, blob_box)["maxboxacc_v2"].value > 0  # all components: the blob still matches
    cv2 = pytest.importorskip("cv2")
    contours = cv2.findContours((m[0, 0].numpy() > 0).astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    largest = max(contours, key=cv2.contourArea)
    assert cv2.boundingRect(largest) == (20, 20, 4, 4)  # the reference would pick the blob


# ----------------------------------------------------------------------------- hole contours (RETR_TREE)


def _contour_depths(hierarchy: np.ndarray | None) -> list[int]:
    """Nesting depth of each OpenCV RETR_TREE contour: even = outer border, odd = hole border."""
    if hierarchy is None:
        return []
    parents = hierarchy[0][:, 3]
    depths = []
    for i in range(len(parents)):
        d, p = 0, parents[i]
        while p >= 0:
            d, p = d + 1, parents[p]
        depths.append(d)
    return depths


def _binaries_with_holes() -> list[np.ndarray]:
    """Random blobs (many holes, diagonal pinches) and hand shapes: nested rings with islands inside holes,
    1-px rings, a diamond ring, diagonal holes, holes open to the image edge, checkerboards, empty and full."""
    rng = np.random.default_rng(0)
    out = [rng.random((int(rng.integers(3, 21)), int(rng.integers(3, 21)))) < p
           for p in np.repeat([0.5, 0.6, 0.7, 0.8], 40)]
    for size, width, offset in [(21, 2, 1), (24, 3, 0), (17, 1, 1), (30, 2, 2)]:
        d = np.minimum.outer(np.arange(size), np.arange(size))
        d = np.minimum(d, d[::-1, ::-1])  # distance to the nearest edge
        out.append(((d - offset) // width % 2 == 0) & (d >= offset))  # concentric rings: holes, islands, holes...
    ring = np.ones((5, 5), bool)
    ring[1:4, 1:4] = False
    ring[2, 2] = True
    diamond = np.zeros((7, 7), bool)
    for y, x in [(1, 3), (2, 2), (2, 4), (3, 1), (3, 5), (4, 2), (4, 4), (5, 3)]:
        diamond[y, x] = True
    pinched = np.ones((4, 4), bool)
    pinched[1, 1] = pinched[2, 2] = False  # two holes touching diagonally: separate under 4-connectivity
    open_u = np.ones((6, 6), bool)
    open_u[1:5, 2:4] = False
    open_u[5, 2:4] = False  # the cavity reaches the image edge: not a hole
    checker = (np.add.outer(np.arange(9), np.arange(11)) % 2 == 0)
    out += [ring, diamond, pinched, open_u, checker, ~checker, np.zeros((5, 6), bool), np.ones((5, 6), bool)]
    return out


def test_outer_and_hole_boxes_match_opencv_tree_contours():
    cv2 = pytest.importorskip("cv2")
    n_holes = 0
    for binary in _binaries_with_holes():
        contours, hierarchy = cv2.findContours(binary.astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2:]
        depths = _contour_depths(hierarchy)
        ref_outer = sorted(cv2.boundingRect(c) for c, d in zip(contours, depths, strict=True) if d % 2 == 0)
        ref_holes = sorted(cv2.boundingRect(c) for c, d in zip(contours, depths, strict=True) if d % 2 == 1)
        t = torch.from_numpy(binary)[None]
        _, comps = component_boxes(connected_components(t))
        _, holes = hole_boxes(t)

        def xywh(boxes: torch.Tensor) -> list[tuple[int, ...]]:
            return sorted((int(b[0]), int(b[1]), int(b[2] - b[0] + 1), int(b[3] - b[1] + 1)) for b in boxes)

        assert xywh(comps) == ref_outer
        assert xywh(holes) == ref_holes
        n_holes += len(ref_holes)
    assert n_holes > 100  # the sample really exercises holes


def _reference_best_ious(scoremap: np.ndarray, gt: np.ndarray, thresholds: np.ndarray, holes: bool) -> np.ndarray:
    """wsolevaluation's `compute_bboxes_from_scoremaps(multi_contour_eval=True)` + `calculate_multiple_iou`:
    per τ, the best IoU of any contour box with any GT box (`holes=False` drops the hole contours)."""
    import cv2

    height, width = scoremap.shape
    image = (scoremap * 255).astype(np.uint8)
    best = []
    for tau in thresholds:
        _, binary = cv2.threshold(image, int(tau * np.max(image)), 255, cv2.THRESH_BINARY)
        contours, hierarchy = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2:]
        if not holes:
            contours = [c for c, d in zip(contours, _contour_depths(hierarchy), strict=True) if d % 2 == 0]
        boxes = [[0, 0, 0, 0]] if not contours else [
            [x, y, min(x + w, width - 1), min(y + h, height - 1)] for x, y, w, h in map(cv2.boundingRect, contours)]
        a, b = np.array(boxes)[:, None], gt[None]
        iw = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
        ih = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
        area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
        area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
        best.append((iw * ih / (area_a + area_b - iw * ih)).max())
    return np.array(best)


def test_wsol_candidate_boxes_match_the_reference_multi_contour_evaluation():
    pytest.importorskip("cv2")
    rng = np.random.default_rng(3)
    H = W = 28
    yy, xx = np.mgrid[0:H, 0:W]
    maps, gts = [], []
    for _ in range(10):
        cy, cx, r = rng.uniform(9, 19), rng.uniform(9, 19), rng.uniform(4, 8)
        ring = np.exp(-((np.hypot(yy - cy, xx - cx) - r) ** 2) / 4)  # a bright ring around a dark hole
        island = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 2) * rng.uniform(0, 0.8)  # sometimes an island inside
        m = ring + island + rng.uniform(0.1, 0.5) * rng.random((H, W))
        maps.append((m - m.min()) / (m.max() - m.min()))
        inner = [cx - r / 2, cy - r / 2, cx + r / 2, cy + r / 2]  # GT inside the ring: where hole boxes matter
        other = sorted(rng.uniform(0, W - 1, 2)) + sorted(rng.uniform(0, H - 1, 2))
        gts.append(torch.tensor([inner, [other[0], other[2], other[1], other[3]]], dtype=torch.float64))
    s = torch.from_numpy(np.stack(maps))[:, None]
    step = 0.02
    thresholds = np.arange(0, 1, step)
    differs = 0
    for contours, holes in [("outer", False), ("tree", True)]:
        res = wsol(s, gts, cam_curve_interval=step, contours=contours)["maxboxacc_v2"]
        assert res.knobs["contours"] == contours
        for i in range(len(maps)):
            ref = _reference_best_ious(maps[i], gts[i].trunc().numpy().astype(np.int64), thresholds, holes)
            np.testing.assert_allclose(res.extras["iou_all"][i, 0].numpy(), ref, rtol=0, atol=1e-12)
            if holes:
                differs += int((ref != _reference_best_ious(maps[i], gts[i].trunc().numpy().astype(np.int64),
                                                            thresholds, False)).any())
    assert differs >= 3  # hole boxes change the best match on several maps


def test_wsol_tree_contours_on_a_ring_hand_oracle():
    # a 4-px-thick ring (rows/cols 2..21) around a 12×12 hole (rows/cols 6..17) in 32×32
    m = torch.zeros(1, 1, 32, 32)
    m[0, 0, 2:22, 2:22] = 1.0
    m[0, 0, 6:18, 6:18] = 0.0
    gt = [torch.tensor([[5.0, 5.0, 19.0, 19.0]])]
    # outer box [2, 2, 22, 22] (21² px) vs GT (15² px): IoU 225/441 ≈ 0.51 → hits at δ = 0.3, 0.5, misses 0.7
    # hole box = hole grown by 1 px = [5, 5, 18, 18] → reference [x, y, x+w, y+h] = [5, 5, 19, 19]: IoU 1
    outer = wsol(m, gt)
    tree = wsol(m, gt, contours="tree")
    assert outer["maxboxacc_v2"].knobs["contours"] == "outer"
    assert outer["maxboxacc_v2"].value == pytest.approx(200 / 3)
    assert tree["maxboxacc_v2"].value == pytest.approx(100.0)
    assert float(tree["maxboxacc_v2"].extras["iou_all"].max()) == pytest.approx(1.0)
    assert float(outer["maxboxacc_v2"].extras["iou_all"].max()) == pytest.approx(225 / 441)
    # the largest component (MaxBoxAcc, GT-known Loc) does not depend on the contour mode
    assert tree["maxboxacc"].value == outer["maxboxacc"].value == 100.0
    assert tree["gt_known_loc"].value == outer["gt_known_loc"].value
    with pytest.raises(ValueError, match="contours"):
        wsol(m, gt, contours="external")


def test_wsol_labels_components_once_per_distinct_level(monkeypatch):
    calls: list[tuple[int, int]] = []
    real = localisation.connected_components

    def counting(binary: torch.Tensor, connectivity: int = 8) -> torch.Tensor:
        calls.append((binary.shape[0], connectivity))
        return real(binary, connectivity)

    monkeypatch.setattr(localisation, "connected_components", counting)
    g = torch.Generator().manual_seed(0)
    m = torch.rand(1, 1, 16, 16, generator=g)
    gt = [torch.tensor([[2.0, 2.0, 9.0, 9.0]])]
    wsol(m, gt, cam_curve_interval=0.001, contours="tree")  # 1000 thresholds, at most 256 uint8 levels
    assert [c for _, c in calls] == [8, 4]  # one batched call for the components, one for the holes
    assert calls[0][0] == calls[1][0] <= 256
