"""Raw attention ("AM", posthoc.md §5): the CLS row of one block's attention, fused over heads."""

from __future__ import annotations

import torch
import torch.nn as nn

from traitlens.backbones.probe import AttentionProbe
from traitlens.explain._base import Explainer, fuse, query_row
from traitlens.explain._explanation import Attribution
from traitlens.explain._registry import register_method
from traitlens.explain._targets import TargetSpec

__all__ = ["RawAttention"]


@register_method(
    "raw_attention", signed=False, class_specific=False, needs_grad=False, default_upsample="nearest",
    default_norm="none", cost="1 forward, no grad; fused attention off at one block",
    summary="CLS-row attention of one block (default last), head-fused; per-head maps in head_maps",
)
class RawAttention(Explainer):
    """M_h = A^ℓ_h[q0, n_p:]; map = fuse_h(M_h).

    Args:
        model: a timm ViT.
        layer: block index ℓ (default −1, the last block).
        head_fusion: "mean" (default) | "max" | "min".
        query: "cls" (default) or "mean_patches".
    """

    def __init__(self, model: nn.Module, layer: int = -1, head_fusion: str = "mean", query: str = "cls") -> None:
        super().__init__(model)
        self.layer, self.head_fusion, self.query = layer, head_fusion, query

    def attribute(self, images: torch.Tensor, target: TargetSpec, target_space: str = "logit") -> Attribution:
        layout = self.layout(images)
        with torch.no_grad(), AttentionProbe(self.model, blocks=[self.layer], capture=("attn",)) as probe:
            logits = self.model(images)
        targets = target.resolve(logits)
        K = targets.shape[1]
        heads = query_row(probe.attn[self.layer], layout, self.query)  # [B,H,P]
        B, H = heads.shape[:2]
        head_maps = heads.reshape(B, 1, H, *layout.grid).expand(B, K, H, *layout.grid)
        fused = fuse(heads, self.head_fusion, dim=1).reshape(B, 1, *layout.grid).expand(B, K, *layout.grid)
        return Attribution(fused.contiguous(), targets, logits, head_maps.contiguous())
