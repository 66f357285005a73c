"""The "native" method: an interpretable model's own maps through `explain` (models.md §0).

One forward gives the maps of all C classes; the K targets are selected from them, so several targets cost
nothing extra. `patch_maps` hold the raw values, `head_maps` the per-head maps where the model has heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn as nn

from traitlens.explain import Attribution, Explainer, TargetSpec, register_method
from traitlens.models.base import InterpretableModel

__all__ = ["NativeMaps"]

HEAD_FUSIONS = ("mean", "max")


@register_method(
    "native", signed=False, class_specific=True, needs_grad=False, default_upsample="bilinear",
    default_norm="minmax", cost="1 forward (all classes at once), no grad",
    summary="The interpretable model's own class maps (Prompt-CAM, INTR, SCOUTER); per-head maps in head_maps",
    families=("native",),
    batched_targets=True, amp_tolerance=0.05,
)
class NativeMaps(Explainer):
    """Native evidence maps of Prompt-CAM, INTR or SCOUTER (models.md §1.2, §2.1, §3.3).

    Prompt-CAM and INTR: `head_maps` [B,K,R,h,w] are the per-head attention maps of the target classes and
    `patch_maps` fuse them (head mean by default, §1.2 / §2.1). SCOUTER: `patch_maps` = A_c, no heads.

    Args:
        model: a `PromptCAM`, `INTR` or `SCOUTER`.
        heads: fuse only these head indices (default: all).
        head_fusion: "mean" (default) | "max".
        top_heads: Prompt-CAM only: fuse the top-k heads ranked by blurring per (image, target) (§1.5);
            costs Σ_{j=k+1..R} j row evaluations per target.
        blur: Prompt-CAM ranking blur, "all" (reference) or "patches".

    Raises:
        TypeError: the model is not one of the interpretable models (use a post-hoc method instead).

    Example:
        >>> exp = explain(net, x, method="native", target="topk:3")  # doctest: +SKIP
        >>> exp.head_maps.shape  # [B,3,R,h,w]  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, heads: Sequence[int] | None = None, head_fusion: str = "mean",
                 top_heads: int | None = None, blur: str = "all") -> None:
        super().__init__(model)
        if not isinstance(model, InterpretableModel):
            raise TypeError(
                f"method 'native' needs an interpretable-by-design model (traitlens.models.PromptCAM, INTR or "
                f"SCOUTER), not {type(model).__name__}; use a post-hoc method such as 'cdam' or 'gradcam'"
            )
        if head_fusion not in HEAD_FUSIONS:
            raise ValueError(f"unknown head_fusion '{head_fusion}'; choose from {HEAD_FUSIONS}")
        if top_heads is not None and heads is not None:
            raise ValueError("pass either heads or top_heads, not both")
        self.heads = None if heads is None else list(heads)
        self.head_fusion, self.top_heads, self.blur = head_fusion, top_heads, blur

    @torch.no_grad()
    def attribute(self, images: torch.Tensor, target: TargetSpec, target_space: str = "logit") -> Attribution:
        model = cast(InterpretableModel, self.model)  # checked in __init__
        out = model.forward_maps(images)
        logits, maps = out.logits, out.maps
        assert maps is not None  # forward_maps always returns them
        targets = target.resolve(logits)
        B, K = targets.shape
        idx = torch.arange(B, device=maps.device)[:, None]
        selected = maps[idx, targets.to(maps.device)]  # [B,K,R,h,w] or [B,K,h,w]
        if maps.dim() == 4:
            if self.heads is not None or self.top_heads is not None:
                raise ValueError(f"{type(self.model).__name__} has no attention heads; drop heads/top_heads")
            return Attribution(selected.contiguous(), targets, logits)
        R = selected.shape[2]
        weights = torch.ones(B, K, R, dtype=selected.dtype, device=selected.device)
        if self.heads is not None:
            bad = [h for h in self.heads if not 0 <= h < R]
            if bad:
                raise ValueError(f"head indices {bad} out of range for {R} heads")
            weights.zero_()
            weights[..., self.heads] = 1.0
        elif self.top_heads is not None:
            weights = self._ranked_weights(images, targets, R, self.top_heads).to(selected)
        if self.head_fusion == "mean":
            fused = (selected * weights[..., None, None]).sum(2) / weights.sum(2)[..., None, None]
        else:
            fused = selected.masked_fill(weights[..., None, None] == 0, float("-inf")).amax(2)
        return Attribution(fused.contiguous(), targets, logits, selected.contiguous(),
                           extras={"head_weights": weights})

    def _ranked_weights(self, images: torch.Tensor, targets: torch.Tensor, R: int, k_top: int) -> torch.Tensor:
        from traitlens.models.head_ranking import rank_heads
        from traitlens.models.promptcam import PromptCAM

        if not isinstance(self.model, PromptCAM):
            raise ValueError("top_heads (ranking by blurring) is defined for Prompt-CAM only")
        B, K = targets.shape
        weights = torch.zeros(B, K, R)
        for k in range(K):
            ranking = rank_heads(self.model, images, targets[:, k], k=k_top, blur=self.blur)
            for b, top in enumerate(ranking.top()):
                weights[b, k, top] = 1.0
        return weights
