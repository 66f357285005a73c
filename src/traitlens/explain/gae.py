"""Generic attention explainability, GAE (Chefer, Gur & Wolf, ICCV 2021; posthoc.md §8). CDAM calls it "RP"."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from traitlens.backbones.introspect import ViTLayout
from traitlens.backbones.probe import AttentionProbe
from traitlens.explain._gradient_explainer import ChunkMaps, GradientChunk, GradientExplainer
from traitlens.explain._registry import register_method

__all__ = ["GAE", "gae_relevance"]


def gae_relevance(attn: list[torch.Tensor], grads: list[torch.Tensor], query: torch.Tensor) -> torch.Tensor:
    """Query row(s) of R_L = (I+Ā_L)⋯(I+Ā_1) with Ā_b = mean_h (G_b,h ⊙ A_b,h)^+ (ReLU before the head mean).

    Args:
        attn: per block (first to last) A_b [..., H, N, N].
        grads: per block G_b = ∂y/∂A_b, broadcastable with `attn`.
        query: row vector(s) e [..., N] selecting the query (one-hot q0, or the mean of the patch rows).

    Returns:
        eᵀR_L [..., N]. It is computed from the left, r ← r + r·Ā_b for b = L..1, which costs N² per block instead
        of the N³ of the running matrix product R_b = R_{b−1} + Ā_b·R_{b−1}; both give the same row.
    """
    r = query
    for a, g in zip(reversed(attn), reversed(grads), strict=True):
        a_bar = F.relu(g * a).mean(-3)  # [..., N, N]
        r = r + (r.unsqueeze(-2) @ a_bar).squeeze(-2)
    return r


@register_method(
    "gae", signed=False, class_specific=True, needs_grad=True, default_upsample="bilinear", default_norm="minmax",
    cost="1 forward + 1 backward down to block 1's attention + L N² row updates; 2·L·H·N² floats per image",
    summary="Generic attention explainability (Chefer ICCV'21; 'RP' in CDAM): R = Π(I + mean_h(G⊙A)^+), CLS row",
    batched_targets=True, amp_tolerance=0.1,
)
class GAE(GradientExplainer):
    """GAE (posthoc.md §8): Ā_b = mean_h (G_b,h ⊙ A_b,h)^+, R_L = (I+Ā_L)⋯(I+Ā_1) (no row normalisation),
    map = R_L[q0, n_p:].

    A is captured in every block without any detach; one `autograd.grad` over all A_b goes back to block 1's
    attention. `patch_maps` keep the raw vector (what CDAM's comparisons used); `explain` then upsamples
    bilinearly and min-maxes, as Chefer's notebooks do.

    Args:
        model: a timm-style ViT whose attention probabilities pass through `attn_drop`.
        multi_target: "vjp" (default; one forward, K batched VJPs over the stored A) | "expand" (replicate images).
        internal_batch_size: rows per forward (images for 'vjp', images×targets for 'expand'); None = one pass;
            "auto" (default) fits a pass in 2 GiB. Memory is ~4·L·H·N² floats per row (~90 MB at ViT-B/16,
            224 px; ~4 GiB at 518 px with patch 14, so one row per pass there). The maps do not depend on it.
        query: "cls" (default) | "mean_patches".

    Example:
        >>> exp = explain(model, x, method="gae", target="topk:3")  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, multi_target: str = "vjp", internal_batch_size: int | str | None = "auto",
                 query: str = "cls") -> None:
        super().__init__(model, multi_target, internal_batch_size, query)

    def _query(self, layout: ViTLayout, like: torch.Tensor) -> torch.Tensor:
        """Row vector e [N]: one-hot at q0, or the mean of the patch rows for 'mean_patches'."""
        e = torch.zeros(layout.num_tokens, dtype=like.dtype, device=like.device)
        if self.query == "cls":
            e[0] = 1.0
        else:
            e[layout.num_prefix_tokens:] = 1.0 / layout.num_patches
        return e

    def _chunk(self, chunk: GradientChunk, layout: ViTLayout) -> ChunkMaps:
        inp = chunk.replicated()
        with torch.enable_grad():
            with AttentionProbe(self.model, blocks="all", capture=("attn",)) as probe:
                logits = chunk.forward(inp)
                attn = [probe.attn[i] for i in range(layout.num_blocks)]
            image_logits, targets, y = chunk.scores(logits)
            grads = chunk.grads(y, attn)  # L × [n,K,H,N,N]
        attn = [chunk.per_target(a.detach()) for a in attn]  # L × [n,K|1,H,N,N]
        row = gae_relevance(attn, grads, self._query(layout, attn[0]))  # [n,K,N]
        return ChunkMaps(row[..., layout.num_prefix_tokens:].detach(), targets, image_logits.detach())
