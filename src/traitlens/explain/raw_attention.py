"""Raw attention ("AM", posthoc.md §5): the CLS row of one block's attention, fused over heads."""

from __future__ import annotations

import torch
import torch.nn as nn

from traitlens.backbones.introspect import ViTLayout
from traitlens.backbones.probe import AttentionProbe
from traitlens.explain._base import Explainer, forward_bytes, fuse, query_row, row_chunks
from traitlens.explain._explanation import Attribution
from traitlens.explain._gradients import _check_batch_size, attention_bytes
from traitlens.explain._registry import register_method
from traitlens.explain._targets import TargetSpec

__all__ = ["RawAttention"]


@register_method(
    "raw_attention", signed=False, class_specific=False, needs_grad=False, default_upsample="nearest",
    default_norm="none", cost="1 forward, no grad; fused attention off at one block",
    summary="CLS-row attention of one block (default last), head-fused; per-head maps in head_maps",
    batched_targets=True, amp_tolerance=0.05,
)
class RawAttention(Explainer):
    """M_h = A^ℓ_h[q0, n_p:]; map = fuse_h(M_h).

    Args:
        model: a timm ViT.
        layer: block index ℓ (default −1, the last block).
        head_fusion: "mean" (default) | "max" | "min".
        query: "cls" (default) or "mean_patches".
        internal_batch_size: images per forward; "auto" (default) fits the estimated memory of a pass in 2 GiB;
            None = one pass. The maps do not depend on it.
    """

    def __init__(self, model: nn.Module, layer: int = -1, head_fusion: str = "mean", query: str = "cls",
                 internal_batch_size: int | str | None = "auto") -> None:
        super().__init__(model)
        _check_batch_size(internal_batch_size)
        self.layer, self.head_fusion, self.query = layer, head_fusion, query
        self.internal_batch_size = internal_batch_size

    def attribute(self, images: torch.Tensor, target: TargetSpec, target_space: str = "logit") -> Attribution:
        layout = self.layout(images)
        passes = [self._pass(images[start:stop], layout)
                  for start, stop in row_chunks(images.shape[0], self.internal_batch_size, self._row_bytes(layout))]
        logits = torch.cat([p[0] for p in passes])
        heads = torch.cat([p[1] for p in passes])  # [B,H,P]
        targets = target.resolve(logits)
        K = targets.shape[1]
        B, H = heads.shape[:2]
        head_maps = heads.reshape(B, 1, H, *layout.grid).expand(B, K, H, *layout.grid)
        fused = fuse(heads, self.head_fusion, dim=1).reshape(B, 1, *layout.grid).expand(B, K, *layout.grid)
        return Attribution(fused.contiguous(), targets, logits, head_maps.contiguous())

    def _pass(self, images: torch.Tensor, layout: ViTLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [n,C], per-head query rows [n,H,P]) of one chunk of images."""
        with torch.no_grad(), AttentionProbe(self.model, blocks=[self.layer], capture=("attn",)) as probe:
            logits = self.model(images)
        return logits, query_row(probe.attn[self.layer], layout, self.query)

    def _row_bytes(self, layout: ViTLayout) -> int:
        """Estimated peak memory of one image in a pass: scores, probabilities and the capture of the unfused
        block (3 attention-sized tensors) and the tokens."""
        return 3 * attention_bytes(layout) + forward_bytes(self.model, layout.num_tokens)
