"""Shared machinery of the metrics (metrics.md §0): scores, map access, rankings with the tie rule,
substrates, the batched perturbation engine, mask helpers, correlations and SSIM."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from traitlens.explain._targets import score_space

__all__ = [
    "SSIM_SETTINGS",
    "average_ranks",
    "boxes_to_masks",
    "connected_components",
    "explanation_parts",
    "image_generator",
    "location_ranks",
    "logits_of",
    "map_normalisation",
    "minmax",
    "minmax_ssim",
    "pearson",
    "perturbation_scores",
    "resolve_targets",
    "rise_blur_kernel",
    "scores",
    "spearman",
    "ssim",
    "substrate",
]

SCORE_SPACES = ("prob", "logit", "log_prob")
SUBSTRATES = ("zero", "black", "blur", "mean", "uniform")
TIE_BREAKS = ("index", "random")


# ----------------------------------------------------------------------------- model scores


def logits_of(output: Any) -> torch.Tensor:
    """Logits from a model output: a tensor, or an object/dict with `logits` (interpretable models)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        return output["logits"]
    return output.logits


def scores(model: Callable[[torch.Tensor], Any], x: torch.Tensor, targets: torch.Tensor,
           score: str = "prob") -> torch.Tensor:
    """Target scores [N] (or [N,K] for targets [N,K]) of `x` in `score` space ('prob' softmax, 'logit', 'log_prob')."""
    if score not in SCORE_SPACES:
        raise ValueError(f"unknown score '{score}'; choose from {SCORE_SPACES}")
    out = logits_of(model(x))
    if score == "prob":
        out = out.softmax(-1)
    elif score == "log_prob":
        out = out.log_softmax(-1)
    t = targets.to(out.device).long()
    return out.gather(-1, t.view(-1, 1)).squeeze(-1) if t.dim() == 1 else out.gather(-1, t)


@torch.no_grad()
def predict(model: Callable[[torch.Tensor], Any], images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Logits [B,C] of clean images, chunked."""
    return torch.cat([logits_of(model(images[i:i + batch_size])) for i in range(0, images.shape[0], batch_size)])


def resolve_targets(
    target: str | torch.Tensor | None,
    exp_targets: torch.Tensor | None,
    model: Callable[[torch.Tensor], Any] | None,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    k: int,
    batch_size: int = 64,
) -> torch.Tensor:
    """The target rule (metrics.md §0): 'explained' (exp.targets, the default), 'pred' (clean top-1) or 'label'.

    Returns [B,K] class ids; 'pred' and 'label' are broadcast over the K maps.
    """
    if isinstance(target, torch.Tensor):
        t = target.long()
        return t.view(-1, 1).expand(-1, k) if t.dim() == 1 else t
    if target in (None, "explained"):
        if exp_targets is None:
            raise ValueError("target='explained' needs an Explanation (or pass targets explicitly)")
        return exp_targets.long()
    if target == "pred":
        return predict(model, images, batch_size).argmax(-1).view(-1, 1).expand(-1, k).cpu()
    if target == "label":
        if labels is None:
            raise ValueError("target='label' needs labels")
        return labels.long().view(-1, 1).expand(-1, k).cpu()
    raise ValueError(f"unknown target rule {target!r}; choose 'explained', 'pred', 'label' or a tensor")


# ----------------------------------------------------------------------------- maps


def explanation_parts(exp: Any, level: str = "pixel") -> tuple[torch.Tensor, torch.Tensor | None]:
    """(maps, targets) from an `Explanation` or a raw tensor.

    `level='pixel'` reads `exp.maps` [B,K,H,W]; `'patch'` reads `exp.patch_maps`; `'raw'` gives the pixel-size
    maps without the method's normalisation (the raw patch map upsampled with the method's default mode). A raw
    tensor [B,H,W] or [B,K,H,W] is used as is, with no targets.
    """
    if isinstance(exp, torch.Tensor):
        maps = exp.unsqueeze(1) if exp.dim() == 3 else exp
        return maps, None
    if level == "pixel":
        return exp.maps, exp.targets
    if level == "patch":
        return exp.patch_maps, exp.targets
    if level == "raw":
        return raw_pixel_maps(exp), exp.targets
    raise ValueError(f"unknown level '{level}'; choose 'pixel', 'patch' or 'raw'")


def raw_pixel_maps(exp: Any, mode: str | None = None) -> torch.Tensor:
    """Pixel-size maps before normalisation: `patch_maps` upsampled with `mode` (the method's default when None)."""
    from traitlens.explain import get_method, upsample_maps

    given = getattr(exp, "extras", {}).get("raw_pixel_maps")
    if given is not None:  # adapters whose maps live at pixel resolution (captum) carry them here
        return given
    if mode is None:
        try:
            mode = get_method(exp.method).default_upsample
        except ValueError:  # adapters and native maps: fall back to the grid the maps came on
            mode = "bilinear"
    return upsample_maps(exp.patch_maps.to(exp.maps.dtype), tuple(exp.maps.shape[-2:]), mode)


def map_normalisation(exp: Any) -> str:
    """How `exp.maps` were normalised, for the knobs record: the `normalize` recorded in `exp.extras` when the
    explainer stored it, else the method's registry default; 'given' for raw tensors."""
    if isinstance(exp, torch.Tensor):
        return "given"
    norm = (getattr(exp, "extras", None) or {}).get("normalize")
    if norm is not None:
        return str(norm)
    from traitlens.explain import get_method

    try:
        return f"{get_method(exp.method).default_norm} (method default)"
    except ValueError:
        return "unknown"


def minmax(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-map min-max over the last two dims; returns (normalised, degenerate). Constant maps become 0."""
    flat = maps.flatten(-2)
    lo, hi = flat.min(-1, keepdim=True).values, flat.max(-1, keepdim=True).values
    span = hi - lo
    degenerate = (span <= 0).squeeze(-1)
    out = (flat - lo) / torch.where(span > 0, span, torch.ones_like(span))
    out = torch.where(span > 0, out, torch.zeros_like(out))
    return out.view_as(maps), degenerate


def image_generator(seed: int, index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for one image, seeded by (seed, dataset index), so results never depend on batching."""
    return torch.Generator(device=device).manual_seed(int(seed) * 1_000_003 + int(index))


def batch_indices(indices: torch.Tensor | None, b: int) -> list[int]:
    """Dataset indices of a batch (0..B−1 when not given)."""
    return list(range(b)) if indices is None else [int(i) for i in torch.as_tensor(indices).view(-1)]


# ----------------------------------------------------------------------------- ranking


def location_ranks(
    saliency: torch.Tensor,
    order: str = "morf",
    tie_break: str = "index",
    seed: int = 0,
    indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rank of every location in the removal order (0 = removed first), [..., n] → [..., n] long.

    MoRF = a stable sort by (−s, flat index), LeRF = a stable sort by (+s, flat index) (metrics.md §0).
    `tie_break='random'` applies a seeded per-image permutation (seed, dataset index) before the stable sort.
    """
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' or 'lerf', got {order!r}")
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"unknown tie_break '{tie_break}'; choose from {TIE_BREAKS}")
    key = torch.nan_to_num(saliency.detach().double(), nan=-math.inf)
    key = -key if order == "morf" else key
    n = key.shape[-1]
    if tie_break == "index":
        removal = torch.sort(key, dim=-1, stable=True).indices
    else:
        lead = key.shape[:-1]
        b = lead[0] if lead else 1
        ids = batch_indices(indices, b)
        perms = torch.stack([torch.randperm(n, generator=image_generator(seed, i)) for i in ids]).to(key.device)
        perm = perms.view(b, *([1] * (len(lead) - 1)), n).expand(*lead, n) if lead else perms[0]
        srt = torch.sort(key.gather(-1, perm), dim=-1, stable=True).indices
        removal = perm.gather(-1, srt)
    ranks = torch.empty_like(removal)
    ranks.scatter_(-1, removal, torch.arange(n, device=key.device).expand_as(removal).contiguous())
    return ranks


def region_ids(h: int, w: int, r: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, int]:
    """Region id [H,W] of non-overlapping r×r regions in row-major order (edge regions may be smaller)."""
    rows = torch.arange(h, device=device) // r
    cols = torch.arange(w, device=device) // r
    n_cols = math.ceil(w / r)
    return rows[:, None] * n_cols + cols[None, :], math.ceil(h / r) * n_cols


def pixel_ranks(
    maps: torch.Tensor,
    unit: str | int = "pixel",
    order: str = "morf",
    tie_break: str = "index",
    seed: int = 0,
    indices: torch.Tensor | None = None,
    patch_maps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Per-pixel rank of its location [B,K,H,W] and the number of locations.

    unit: 'pixel' (rank pixels), 'patch' (rank `patch_maps`, one patch per location) or an int r (rank r×r regions by
    their summed relevance, Samek et al.). A location is removed in all channels at once.
    """
    B, K, H, W = maps.shape
    if unit == "pixel" or unit == 1:
        return location_ranks(maps.reshape(B, K, H * W), order, tie_break, seed, indices).view(B, K, H, W), H * W
    if unit == "patch":
        if patch_maps is None:
            raise ValueError("unit='patch' needs patch maps (pass an Explanation)")
        g_h, g_w = patch_maps.shape[-2:]
        r = location_ranks(patch_maps.reshape(B, K, g_h * g_w), order, tie_break, seed, indices)
        r = r.view(B, K, g_h, g_w).double()
        if H % g_h == 0 and W % g_w == 0:
            up = r.repeat_interleave(H // g_h, -2).repeat_interleave(W // g_w, -1)
        else:
            up = F.interpolate(r.view(B * K, 1, g_h, g_w), size=(H, W), mode="nearest").view(B, K, H, W)
        return up.long(), g_h * g_w
    if isinstance(unit, int) and unit > 1:
        ids, n = region_ids(H, W, unit, maps.device)
        sums = torch.zeros(B, K, n, dtype=torch.float64, device=maps.device)
        sums.scatter_add_(-1, ids.view(1, 1, -1).expand(B, K, -1), maps.reshape(B, K, -1).double())
        r = location_ranks(sums, order, tie_break, seed, indices)
        return r.gather(-1, ids.view(1, 1, -1).expand(B, K, -1)).view(B, K, H, W), n
    raise ValueError(f"unknown unit {unit!r}; choose 'pixel', 'patch' or a region size r > 1")


# ----------------------------------------------------------------------------- substrates


def rise_blur_kernel(klen: int = 11, nsig: float = 5.0) -> torch.Tensor:
    """RISE's `gkern`: scipy `gaussian_filter(delta, nsig)` of a centred klen×klen delta ('reflect' mode,
    truncate 4), reproduced exactly without scipy. Separable; sums to 1."""
    radius = int(4.0 * nsig + 0.5)
    t = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 * (t / nsig) ** 2)
    w /= w.sum()
    period = 2 * klen
    k1 = np.zeros(klen)
    c = klen // 2
    for i in range(klen):
        m = np.mod(i + t, period)
        m = np.where(m >= klen, period - 1 - m, m)  # half-sample symmetric reflection (scipy 'reflect')
        k1[i] = w[m == c].sum()
    return torch.from_numpy(np.outer(k1, k1))


def substrate(
    kind: str,
    images: torch.Tensor,
    model: Any = None,
    seed: int = 0,
    indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """What removed pixels become (metrics.md §0 "Substrates"), in the model-input space [B,C,H,W].

    'zero' = 0 in normalised space; 'black' = pixel 0 mapped through the model's normalisation; 'blur' = RISE's
    11×11, σ = 5 Gaussian (zero padding); 'mean' = per-image channel mean; 'uniform' = U[0,1] pixels, normalised,
    seeded per image.
    """
    if kind == "zero":
        return torch.zeros_like(images)
    if kind == "black":
        return _to_model_space(model, torch.zeros_like(images))
    if kind == "blur":
        C = images.shape[1]
        k = rise_blur_kernel().to(images)
        weight = k.expand(C, 1, *k.shape).contiguous()
        return F.conv2d(images, weight, padding=k.shape[-1] // 2, groups=C)
    if kind == "mean":
        return images.mean((-2, -1), keepdim=True).expand_as(images).clone()
    if kind == "uniform":
        ids = batch_indices(indices, images.shape[0])
        u = torch.stack([torch.rand(images.shape[1:], generator=image_generator(seed, i), dtype=torch.float64)
                         for i in ids]).to(images)
        return _to_model_space(model, u)
    raise ValueError(f"unknown substrate '{kind}'; choose from {SUBSTRATES}")


def _to_model_space(model: Any, x01: torch.Tensor) -> torch.Tensor:
    from traitlens.backbones.preprocess import normalize

    return normalize(model, x01)


# ----------------------------------------------------------------------------- perturbation engine


@torch.no_grad()
def perturbation_scores(
    model: Callable[[torch.Tensor], Any],
    images: torch.Tensor,
    ranks: torch.Tensor,
    counts: torch.Tensor,
    fill: torch.Tensor,
    targets: torch.Tensor,
    *,
    score: str = "prob",
    insertion: bool = False,
    batch_size: int = 64,
    extra_targets: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Scores of every perturbation step of every (image, target): [B,K,S].

    Step s of (b, k) removes the locations whose rank is < counts[s]: deletion replaces them by `fill[b]`,
    insertion starts from `fill[b]` and pastes them back from the image. The perturbed copies of all steps are
    built as one flat [B·K·S, C, H, W] stack, chunked by `batch_size`, one model call per chunk — no Python
    loop over pixels or steps (metrics.md §0 "Batching").

    Args:
        ranks: [B,K,H,W] removal rank of each pixel's location (`pixel_ranks`).
        counts: [S] number of locations removed at each step.
        fill: [B,C,H,W] substrate.
        targets: [B,K] class ids whose score is read.
        extra_targets: optional [B,K] second class ids whose top-1 agreement is also returned (accuracy curves).

    Returns:
        scores [B,K,S]; with `extra_targets`, also hits [B,K,S] (1 where the perturbed top-1 equals them).
    """
    B, K = targets.shape
    counts = counts.to(images.device).long()
    S = counts.numel()
    total = B * K * S
    out = torch.empty(total, dtype=torch.float64)
    hits = torch.empty(total, dtype=torch.float64) if extra_targets is not None else None
    ranks = ranks.to(images.device)
    targets = targets.to(images.device)
    for start in range(0, total, batch_size):
        idx = torch.arange(start, min(start + batch_size, total), device=images.device)
        b, k, s = idx // (K * S), (idx // S) % K, idx % S
        removed = (ranks[b, k] < counts[s].view(-1, 1, 1)).unsqueeze(1)
        x = torch.where(removed, images[b], fill[b]) if insertion else torch.where(removed, fill[b], images[b])
        logits = logits_of(model(x))
        out[idx.cpu()] = _space(logits, score).gather(-1, targets[b, k].view(-1, 1)).squeeze(-1).double().cpu()
        if hits is not None:
            hits[idx.cpu()] = (logits.argmax(-1) == extra_targets.to(logits.device)[b, k]).double().cpu()
    if hits is not None:
        return out.view(B, K, S), hits.view(B, K, S)
    return out.view(B, K, S)


def _space(logits: torch.Tensor, score: str) -> torch.Tensor:
    """The metrics' `score=` option: the same score spaces as the explainers' `target_space`."""
    return score_space(logits, score, option="score")


def trapezoid_auc(curves: torch.Tensor) -> torch.Tensor:
    """RISE AUC on [0,1] with n intervals: (Σ_k p_k − (p_0 + p_n)/2) / n over the last dim (metrics.md §1.1)."""
    n = curves.shape[-1] - 1
    return (curves.sum(-1) - (curves[..., 0] + curves[..., -1]) / 2) / max(n, 1)


# ----------------------------------------------------------------------------- masks and boxes


def boxes_to_masks(boxes: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Rasterise per-image boxes ([n,4] xyxy, pixel i spans [i, i+1)) to [B,H,W] bool: pixels whose centre lies
    inside (inclusive) any box (metrics.md §0)."""
    H, W = size
    cy = torch.arange(H, dtype=torch.float64) + 0.5
    cx = torch.arange(W, dtype=torch.float64) + 0.5
    out = torch.zeros(len(boxes), H, W, dtype=torch.bool)
    for i, bx in enumerate(boxes):
        bx = torch.as_tensor(bx, dtype=torch.float64).view(-1, 4)
        if bx.numel() == 0:
            continue
        iny = (cy[None, :] >= bx[:, 1:2]) & (cy[None, :] <= bx[:, 3:4])
        inx = (cx[None, :] >= bx[:, 0:1]) & (cx[None, :] <= bx[:, 2:3])
        out[i] = (iny[:, :, None] & inx[:, None, :]).any(0)
    return out


def masks_for(masks: torch.Tensor | None, boxes: Sequence[torch.Tensor] | None, B: int, K: int,
              size: tuple[int, int]) -> torch.Tensor:
    """Localisation targets [B,K,H,W] bool from masks ([B,H,W], [B,1,H,W] or [B,K,H,W]) or rasterised boxes."""
    if masks is None:
        if boxes is None:
            raise ValueError("this metric needs masks or boxes")
        masks = boxes_to_masks(boxes, size)
    masks = masks.bool()
    if masks.dim() == 3:
        masks = masks.unsqueeze(1)
    if masks.shape[-2:] != torch.Size(size):
        raise ValueError(f"mask size {tuple(masks.shape[-2:])} differs from the map size {size}")
    return masks.expand(B, K, *size) if masks.shape[1] == 1 else masks


@torch.no_grad()
def connected_components(binary: torch.Tensor, connectivity: int = 8) -> torch.Tensor:
    """8- (or 4-) connected component labels of bool [..., H, W]: 0 background, else 1 + the smallest flat index
    of the component. Batched union-find on the device (hooking roots to their smallest neighbour label, then full
    path compression), so it needs no OpenCV / SciPy and converges in a few rounds even for long, snaking
    components. 4-connectivity labels the holes of 8-connected shapes (the digital-topology pairing OpenCV uses)."""
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
    *lead, H, W = binary.shape
    x = binary.reshape(-1, H * W)
    N, n = x.shape
    big = n  # background points at a sentinel slot past the last pixel
    idx = torch.arange(n, device=binary.device).expand(N, n)
    parent = torch.where(x, idx, torch.full_like(idx, big))
    parent = torch.cat([parent, torch.full_like(parent[:, :1], big)], 1)  # [N, n+1], slot n = sentinel

    def compress(p: torch.Tensor) -> torch.Tensor:
        while True:
            q = p.gather(1, p)
            if torch.equal(q, p):
                return p
            p = q

    while True:
        lab = parent[:, :n].view(N, 1, H, W).float()
        m = _neighbourhood_min(lab, connectivity)  # exact below 2^24
        m = torch.where(x.view(N, 1, H, W), m, torch.full_like(m, big)).view(N, n).long()
        # hook: each pixel's root adopts the smallest label seen next to the pixel
        new = parent.scatter_reduce(1, parent[:, :n], m, reduce="amin", include_self=True)
        new = compress(new)
        if torch.equal(new, parent):
            break
        parent = new
    out = torch.where(x, parent[:, :n] + 1, torch.zeros_like(parent[:, :n]))
    return out.view(*lead, H, W)


def _neighbourhood_min(lab: torch.Tensor, connectivity: int) -> torch.Tensor:
    """Smallest value among each pixel and its 8 (3×3 square) or 4 (3×3 cross) neighbours of [N,1,H,W]."""
    if connectivity == 8:
        return -F.max_pool2d(-lab, 3, 1, 1)
    vertical = -F.max_pool2d(-lab, (3, 1), 1, (1, 0))
    horizontal = -F.max_pool2d(-lab, (1, 3), 1, (0, 1))
    return torch.minimum(vertical, horizontal)


# ----------------------------------------------------------------------------- correlations and SSIM


def pearson(a: torch.Tensor, b: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Pearson r along `dim`; NaN where either side has zero variance."""
    a = a.double() - a.double().mean(dim, keepdim=True)
    b = b.double() - b.double().mean(dim, keepdim=True)
    den = (a.square().sum(dim) * b.square().sum(dim)).sqrt()
    num = (a * b).sum(dim)
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.full_like(num, math.nan))


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks along the last dim with ties given their average rank (1-based, as scipy's `rankdata`)."""
    n = x.shape[-1]
    srt, order = torch.sort(x.double(), dim=-1, stable=True)
    pos = torch.arange(n, device=x.device).expand_as(srt)
    new_group = torch.ones_like(srt, dtype=torch.bool)
    new_group[..., 1:] = srt[..., 1:] != srt[..., :-1]
    start = torch.where(new_group, pos, torch.zeros_like(pos)).cummax(-1).values
    last = torch.ones_like(new_group)
    last[..., :-1] = new_group[..., 1:]
    end_rev = torch.where(last, pos, torch.full_like(pos, n)).flip(-1).cummin(-1).values.flip(-1)
    avg = (start + end_rev).double() / 2 + 1
    ranks = torch.empty_like(avg)
    ranks.scatter_(-1, order, avg)
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation along the last dim (average ranks for ties); NaN for a constant side."""
    return pearson(average_ranks(a), average_ranks(b))


SSIM_SETTINGS = "7x7 uniform window, sample covariance, K1 0.01, K2 0.03, data_range 1, min-max maps"
"""The SSIM of metrics.md §6 (random logit) and §5 (MPRT), as recorded in the knobs."""


def ssim(a: torch.Tensor, b: torch.Tensor, win: int = 7, k1: float = 0.01, k2: float = 0.03,
         data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of [..., H, W] pairs with a `win`×`win` uniform window, averaged over the valid (un-padded) region.

    This is skimage's `structural_similarity(a, b, win_size=win, data_range=data_range)` with its defaults
    (`gaussian_weights=False`, `use_sample_covariance=True`: (co)variances carry the N/(N−1) factor, N = win²).
    We follow that convention because Quantus' `ssim` (behind `RandomLogit`) calls skimage with its defaults;
    Wang et al.'s original (Gaussian 11×11 weights, population covariance) is not what the §6 reference computes.
    """
    *lead, H, W = a.shape
    if min(H, W) < win:
        raise ValueError(f"SSIM needs maps of at least {win}x{win}, got {H}x{W}; use pixel-level maps")
    x = a.reshape(-1, 1, H, W).double()
    y = b.reshape(-1, 1, H, W).double()
    kern = torch.full((1, 1, win, win), 1.0 / win**2, dtype=torch.float64, device=a.device)

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kern)  # valid region only: skimage crops (win−1)/2 on every side before the mean

    n = win * win
    cov_norm = n / (n - 1)
    ux, uy = filt(x), filt(y)
    vx = cov_norm * (filt(x * x) - ux * ux)
    vy = cov_norm * (filt(y * y) - uy * uy)
    vxy = cov_norm * (filt(x * y) - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return s.mean((-2, -1)).view(*lead)


def minmax_ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM of [..., H, W] map pairs after per-map min-max to [0,1] (`SSIM_SETTINGS`; a constant map becomes 0).

    The one SSIM every map-similarity metric uses (random logit §6, MPRT §5), so they stay comparable."""
    return ssim(minmax(a.double())[0], minmax(b.double())[0])
