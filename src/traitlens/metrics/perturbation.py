"""Perturbation machinery of the faithfulness metrics (metrics.md §0): the substrates removed pixels become and
the batched engine that scores every perturbation step of every (image, target) in flat chunks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, overload

import numpy as np
import torch
import torch.nn.functional as F

from traitlens.metrics.inputs import batch_indices, image_generator, in_score_space

__all__ = ["SUBSTRATES", "perturbation_scores", "rise_blur_kernel", "substrate"]

SUBSTRATES = ("zero", "black", "blur", "mean", "uniform")


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


@overload
def perturbation_scores(
    model: Callable[[torch.Tensor], Any],
    images: torch.Tensor,
    ranks: torch.Tensor,
    counts: torch.Tensor,
    fill: torch.Tensor,
    targets: torch.Tensor,
    *,
    score: str = ...,
    insertion: bool = ...,
    batch_size: int = ...,
    extra_targets: None = None,
) -> torch.Tensor: ...


@overload
def perturbation_scores(
    model: Callable[[torch.Tensor], Any],
    images: torch.Tensor,
    ranks: torch.Tensor,
    counts: torch.Tensor,
    fill: torch.Tensor,
    targets: torch.Tensor,
    *,
    score: str = ...,
    insertion: bool = ...,
    batch_size: int = ...,
    extra_targets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]: ...


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
        logits = model(x)
        space = in_score_space(logits, score)
        out[idx.cpu()] = space.gather(-1, targets[b, k].view(-1, 1)).squeeze(-1).double().cpu()
        if hits is not None and extra_targets is not None:
            hits[idx.cpu()] = (logits.argmax(-1) == extra_targets.to(logits.device)[b, k]).double().cpu()
    if hits is not None:
        return out.view(B, K, S), hits.view(B, K, S)
    return out.view(B, K, S)
