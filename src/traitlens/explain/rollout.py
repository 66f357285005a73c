"""Attention rollout (Abnar & Zuidema 2020; posthoc.md §6), as run in the AGCAM comparisons."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
import torch.nn as nn

from traitlens.backbones.probe import AttentionProbe
from traitlens.backbones.protocols import as_vit
from traitlens.explain._base import Explainer, fuse, query_row
from traitlens.explain._explanation import Attribution
from traitlens.explain._registry import register_method
from traitlens.explain._targets import TargetSpec

__all__ = ["AttentionRollout"]


@register_method(
    "rollout", signed=False, class_specific=False, needs_grad=False, default_upsample="bilinear",
    default_norm="minmax", cost="1 forward, no grad; running N×N product",
    summary="Attention rollout: product of ½(Ā+I) over blocks, CLS row",
)
class AttentionRollout(Explainer):
    """R = Â_L ⋯ Â_{s+1}, Â_b = rownorm(½(fuse_h(A_b) + I)); map = R[q0, n_p:].

    Args:
        model: a timm ViT.
        head_fusion: "mean" (default) | "max" | "min".
        discard_ratio: zero the ⌊r·N²⌋ smallest entries of Ā_b per image (never (q0,q0)); default 0.
        start_layer: s, blocks before it are skipped (Chefer's evaluation scripts use 1).
        renorm: "rows" (default) or "jacobgil" (divide by the broadcast [1,N] column sums, reference quirk).
        query: "cls" (default) or "mean_patches".
    """

    _rollout: torch.Tensor | None

    def __init__(self, model: nn.Module, head_fusion: str = "mean", discard_ratio: float = 0.0,
                 start_layer: int = 0, renorm: str = "rows", query: str = "cls") -> None:
        super().__init__(model)
        if not 0.0 <= discard_ratio < 1.0:
            raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
        if renorm not in ("rows", "jacobgil"):
            raise ValueError(f"unknown renorm '{renorm}'; choose 'rows' or 'jacobgil'")
        self.head_fusion, self.discard_ratio = head_fusion, discard_ratio
        self.start_layer, self.renorm, self.query = start_layer, renorm, query

    def _step(self, attn: torch.Tensor) -> torch.Tensor:
        fused = fuse(attn, self.head_fusion, dim=1)  # [B,N,N]
        B, N, _ = fused.shape
        if self.discard_ratio > 0:
            flat = fused.reshape(B, -1).clone()
            n_drop = int(self.discard_ratio * N * N)
            keep_cls = flat[:, 0].clone()
            idx = flat.topk(n_drop, dim=-1, largest=False).indices
            flat.scatter_(1, idx, 0.0)
            flat[:, 0] = keep_cls
            fused = flat.view(B, N, N)
        eye = torch.eye(N, dtype=fused.dtype, device=fused.device)
        a = (fused + eye) / 2
        if self.renorm == "rows":
            return a / a.sum(-1, keepdim=True)
        return a / a.sum(-2, keepdim=True)  # jacobgil: a [1,N] sum broadcast over rows

    def attribute(self, images: torch.Tensor, target: TargetSpec, target_space: str = "logit") -> Attribution:
        layout = self.layout(images)
        blocks = list(range(self.start_layer, layout.num_blocks))
        rollout: torch.Tensor | None = None
        with torch.no_grad(), AttentionProbe(self.model, blocks=blocks, capture=("attn",)) as probe:
            # Fold each block's attention into the running product as soon as it is computed.
            vit_blocks = as_vit(self.model).blocks
            handles = [vit_blocks[b].register_forward_hook(self._make_fold(probe, b)) for b in blocks]
            self._rollout = None
            try:
                logits = self.model(images)
            finally:
                for h in handles:
                    h.remove()
            rollout = self._rollout
            self._rollout = None
        targets = target.resolve(logits)
        K = targets.shape[1]
        B = images.shape[0]
        # rollout is None only when no block is folded (start_layer ≥ L); query_row then raises a TypeError.
        row = query_row(cast(torch.Tensor, rollout), layout, self.query).reshape(B, 1, *layout.grid)
        return Attribution(row.expand(B, K, *layout.grid).contiguous(), targets, logits)

    def _make_fold(self, probe: AttentionProbe, b: int) -> Callable[..., None]:
        def hook(*_: object) -> None:
            step = self._step(probe.attn.pop(b))
            probe.attn.pop(b - len(as_vit(self.model).blocks), None)
            self._rollout = step if self._rollout is None else step @ self._rollout

        return hook
