"""AGCAM: Attention-Guided CAM (Leem & Seo, AAAI 2024; posthoc.md §4)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from traitlens.backbones.introspect import ViTLayout
from traitlens.backbones.probe import AttentionProbe
from traitlens.backbones.protocols import ViTAttention, as_vit
from traitlens.explain._base import fuse
from traitlens.explain._gradient_explainer import ChunkMaps, GradientChunk, GradientExplainer
from traitlens.explain._registry import register_method

__all__ = ["AGCAM"]

FUSIONS = ("sum", "mean", "max")
SCORE_ACTS = ("sigmoid", "none")
GRAD_ACTS = ("relu", "abs", "none")


@register_method(
    "agcam", signed=False, class_specific=True, needs_grad=True, default_upsample="bilinear", default_norm="minmax",
    cost="1 forward (unfused attention in all blocks) + 1 backward down to block 1's attention (detached inputs)",
    summary="Attention-Guided CAM: Σ_k Σ_h sigmoid(S^k_h[q0]) ⊙ ReLU(∂y/∂A^k_h[q0]) with attention inputs detached",
    batched_targets=True, amp_tolerance=0.05,
)
class AGCAM(GradientExplainer):
    """M = Σ_k Σ_h sigmoid(Ŝ^k_h) ⊙ ReLU(Ĝ^k_h) ∈ R^P, M ≥ 0 (posthoc.md §4).

    Ŝ^k_h = S^k_h[q0, n_p:] are pre-softmax scores (q·scale)kᵀ, Ĝ^k_h = ∂y/∂A^k_h[q0, n_p:] with A the post-softmax
    (post-dropout) attention. The input of every attention module is detached, so the gradient reaches A^k only through
    the final norm, later blocks' MLP branches and skips, and block k's `proj`, never through another block's attention.
    Only the q0 row of S is kept per block ([B,H,1,N]); one `autograd.grad` covers all A^k. The reference min-maxes
    after the bilinear upsampling, which is what `explain` does with the registry defaults.

    Args:
        model: a timm ViT with timm's standard `Attention` (S must be readable).
        head_fusion: "sum" (reference) | "mean" | "max" over heads.
        layer_fusion: "sum" (reference) | "mean" | "max" over blocks (applied after the head fusion).
        score_act: "sigmoid" (reference) | "none".
        grad_act: "relu" (reference) | "abs" | "none" (the latter two are ablations and may give signed maps).
        detach_attention_input: detach every attention input (reference: True).
        multi_target: "vjp" (default; one forward, K batched VJPs) | "expand" (replicate the images per target).
        internal_batch_size: rows per forward (images for 'vjp', images×targets for 'expand'); None = one pass;
            "auto" (default) fits a pass in 2 GiB of estimated memory. The maps do not depend on it.
        query: "cls" (default) | "mean_patches" (average the products over the patch rows instead of row q0).

    `head_maps` hold the per-head maps fused over layers.

    Example:
        >>> exp = explain(model, x, method="agcam")  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, head_fusion: str = "sum", layer_fusion: str = "sum",
                 score_act: str = "sigmoid", grad_act: str = "relu", detach_attention_input: bool = True,
                 multi_target: str = "vjp", internal_batch_size: int | str | None = "auto",
                 query: str = "cls") -> None:
        for name, value, allowed in (("head_fusion", head_fusion, FUSIONS), ("layer_fusion", layer_fusion, FUSIONS),
                                     ("score_act", score_act, SCORE_ACTS), ("grad_act", grad_act, GRAD_ACTS)):
            if value not in allowed:
                raise ValueError(f"unknown {name} '{value}'; choose from {allowed}")
        super().__init__(model, multi_target, internal_batch_size, query)
        self.head_fusion, self.layer_fusion = head_fusion, layer_fusion
        self.score_act, self.grad_act = score_act, grad_act
        self.detach_attention_input = bool(detach_attention_input)

    def _rows(self, layout: ViTLayout) -> slice:
        """Query rows whose products are averaged: row q0, or the patch rows for 'mean_patches'."""
        if self.query == "cls":
            return slice(0, 1)
        return slice(layout.num_prefix_tokens, layout.num_tokens)

    def _forward(self, inp: torch.Tensor, layout: ViTLayout,
                 forward: Callable[[torch.Tensor], torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """One forward with all blocks hooked: (logits, S rows [B,H,R,N] per block, A [B,H,N,N] per block).

        The S rows are computed inside each attention's forward hook and q/k are dropped right away, so only
        [B,H,R,N] per block is stored (R = 1 for the CLS row). `forward` defaults to the whole model.
        """
        forward = self.model if forward is None else forward
        rows = self._rows(layout)
        L = layout.num_blocks
        scores: dict[int, torch.Tensor] = {}
        with torch.enable_grad(), AttentionProbe(self.model, blocks="all", capture=("attn", "q", "k"),
                                                 detach_attention_input=self.detach_attention_input) as probe:

            def fold(i: int) -> Callable[..., None]:
                def hook(module: ViTAttention, *_: object) -> None:
                    q, k = probe.q.pop(i), probe.k.pop(i)
                    probe.q.pop(i - L, None)
                    probe.k.pop(i - L, None)
                    # S is read, never differentiated: keep it out of the graph.
                    scores[i] = (q.detach()[:, :, rows] * module.scale) @ k.detach().transpose(-2, -1)

                return hook

            handles = [blk.attn.register_forward_hook(fold(i)) for i, blk in enumerate(as_vit(self.model).blocks)]
            try:
                logits = forward(inp)
            finally:
                for h in handles:
                    h.remove()
            attn = [probe.attn[i] for i in range(L)]
        return logits, [scores[i] for i in range(L)], attn

    def _chunk(self, chunk: GradientChunk, layout: ViTLayout) -> ChunkMaps:
        n_p = layout.num_prefix_tokens
        rows = self._rows(layout)
        logits, scores, attn = self._forward(chunk.replicated(), layout, chunk.forward)
        with torch.enable_grad():
            image_logits, targets, y = chunk.scores(logits)
            grads = chunk.grads(y, attn)  # L × [n,K,H,N,N]
        del attn
        per_block = []
        for s, g in zip(scores, grads, strict=True):
            s_hat = chunk.per_target(s)[..., n_p:]  # [n,K|1,H,R,P]
            g_hat = g[..., rows, n_p:]  # [n,K,H,R,P]
            per_block.append((self._act_scores(s_hat) * self._act_grads(g_hat)).mean(-2))  # mean over R query rows
        del grads
        stacked = torch.stack(per_block, dim=2)  # [n,K,L,H,P]
        fused = fuse(fuse(stacked, self.head_fusion, dim=3), self.layer_fusion, dim=2)  # [n,K,P]
        head_maps = fuse(stacked, self.layer_fusion, dim=2)  # [n,K,H,P]
        return ChunkMaps(fused.detach(), targets, image_logits.detach(), head_maps.detach())

    def _act_scores(self, s: torch.Tensor) -> torch.Tensor:
        return s.sigmoid() if self.score_act == "sigmoid" else s

    def _act_grads(self, g: torch.Tensor) -> torch.Tensor:
        if self.grad_act == "relu":
            return F.relu(g)
        return g.abs() if self.grad_act == "abs" else g
