"""Grad-CAM: Chefer's ViT definition (posthoc.md §7), its token variant, and classic Grad-CAM for CNNs.

Both ViT variants also run on a "prompted_vit" model (Prompt-CAM) through its `LastBlock`: the query row of
class c is then c's own prompt token, the token its logit is read from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from traitlens.backbones.introspect import ViTLayout, is_vit
from traitlens.backbones.probe import AttentionProbe
from traitlens.backbones.protocols import TimmClassifier, as_vit
from traitlens.backbones.trunk import head_forward, trunk_forward
from traitlens.explain._base import last_block_row_bytes, query_row, rows_in_chunks, sequence_bytes
from traitlens.explain._compat import prompted_backbone
from traitlens.explain._explanation import Attribution
from traitlens.explain._gradient_explainer import ChunkMaps, GradientChunk, GradientExplainer
from traitlens.explain._gradients import AUTO_BUDGET_BYTES, _check_state
from traitlens.explain._registry import register_method
from traitlens.explain._sites import prompted_site
from traitlens.explain._targets import TargetSpec

__all__ = ["GradCAM", "GradCAMViT"]

#: Images per no-grad feature pass of a CNN under 'auto' (no per-image estimate exists for an arbitrary CNN).
CNN_FEATURE_ROWS = 16


# --------------------------------------------------------------------------------------------------------------
# Grad-CAM for ViTs (Chefer) and its token variant.
# --------------------------------------------------------------------------------------------------------------

def _last_block_split(model: nn.Module, images: torch.Tensor, internal_batch_size: int | str | None, row_bytes: int
                      ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]] | None:
    """(x, f) with f(x) = model(images) and x = x^(L−1) from the no-grad trunk (posthoc.md §0 "Trunk split"), run
    over chunks of images of `row_bytes` each; None for models without the timm VisionTransformer parts."""
    k = len(as_vit(model).blocks) - 1
    try:
        tokens = rows_in_chunks(lambda t: trunk_forward(model, t, k), images, internal_batch_size, row_bytes)
    except TypeError:
        return None
    return tokens, lambda t: head_forward(model, t, k)


def class_token_rows(t: torch.Tensor, targets: torch.Tensor, start: int) -> torch.Tensor:
    """Row `targets[b,k]` (class k's own token) of [n, K|1, H, N, N], restricted to columns start.. → [n,K,H,P]."""
    n, K = targets.shape
    t = t.expand(n, K, *t.shape[2:])
    idx = targets.view(n, K, 1, 1, 1).expand(n, K, t.shape[2], 1, t.shape[-1])
    return t.gather(-2, idx).squeeze(-2)[..., start:]


def attn_cam(attn_rows: torch.Tensor, grad_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Chefer's Grad-CAM from query rows a_h = A_h[q0, n_p:] and g_h = G_h[q0, n_p:], both [..., H, P].

    w_h = mean_j g_h[j]; per-head map w_h·a_h; M = ReLU(mean_h(w_h·a_h)) (ReLU after the head mean, as in
    `GradCam.generate_cam_attn`). Returns (M [..., P], per-head maps [..., H, P]).
    """
    heads = grad_rows.mean(-1, keepdim=True) * attn_rows
    return F.relu(heads.mean(-2)), heads


def token_cam(tokens: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's ViT recipe on patch tokens [..., P, D] and their gradients [..., P, D].

    α_d = mean_p ∂y/∂act[p, d]; M[p] = ReLU(Σ_d α_d·act[p, d]) → [..., P].
    """
    alpha = grads.mean(-2, keepdim=True)
    return F.relu((alpha * tokens).sum(-1))


@register_method(
    "gradcam_vit", signed=False, class_specific=True, needs_grad=True, default_upsample="bilinear",
    default_norm="minmax", cost="1 forward (trunk without grad) + 1 backward through the last block only",
    summary="Grad-CAM for ViTs (Chefer): ReLU(mean_h(mean_j G_h[q0]·A_h[q0])) on the last block; "
            "variant='tokens' is pytorch-grad-cam on norm1 tokens",
    families=("vit", "prompted_vit"),
    batched_targets=True,
)
class GradCAMViT(GradientExplainer):
    """Grad-CAM on the last block of a ViT (posthoc.md §7).

    `variant='attn'` (default, Chefer's `generate_cam_attn`): with A = A^L and G = ∂y/∂A^L,
    a_h = A_h[q0, n_p:], w_h = mean_j G_h[q0, n_p+j], M = ReLU(mean_h(w_h·a_h)); `head_maps` hold w_h·a_h.
    `variant='tokens'` (pytorch-grad-cam's ViT recipe): act = `blocks[-1].norm1` patch tokens as [D,g_h,g_w],
    α_d = spatial mean of ∂y/∂act_d, M = ReLU(Σ_d α_d·act_d); the grid comes from the model.

    Only the last block is hooked; the trunk x^(L−1) runs once without grad and only x^(L−1) is replicated per
    target ('expand').

    On Prompt-CAM ("prompted_vit"), y is the logit of class c, read from c's prompt token after the last block, so
    `query='cls'` reads row c (that prompt) instead of the CLS row: a_h = A_h[c, C+n_p:], w_h = mean_j
    G_h[c, C+n_p+j]. 'mean_patches' and 'tokens' read the patch tokens after the C prompts and the prefix.

    Args:
        model: a timm ViT or a "prompted_vit" model (posthoc.md §0 "Model families").
        variant: "attn" (default) | "tokens".
        multi_target: "expand" (default; replicate x^(L−1) per target) | "vjp" (one forward, batched VJPs).
        internal_batch_size: rows per pass: images for the no-grad trunk, images×targets for an 'expand'
            last-block pass. "auto" (default) fits the estimated memory of a pass in 2 GiB (docs/performance.md),
            None runs one pass; the maps are the same for every value.
        query: "cls" (default) | "mean_patches" (attn variant only; averages the patch rows).

    Example:
        >>> exp = explain(model, x, method="gradcam_vit", target="topk:2")  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, variant: str = "attn", multi_target: str = "expand",
                 internal_batch_size: int | str | None = "auto", query: str = "cls") -> None:
        if variant not in ("attn", "tokens"):
            raise ValueError(f"unknown variant '{variant}'; choose 'attn' (Chefer) or 'tokens' (pytorch-grad-cam)")
        super().__init__(model, multi_target, internal_batch_size, query)
        self.variant = variant
        self._site = prompted_site(model)
        self._whole_model = False  # set by `_split` when the model has no trunk split (full forward per row)

    def _needs_cls(self) -> bool:
        # A prompted ViT's query row is the target's class token, which always exists.
        return self.variant == "attn" and self.query == "cls" and self._site is None

    def _split(self, images: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        layout = self.layout(images)
        vit = self.model if self._site is None else self._site.vit
        row_bytes = sequence_bytes(vit, self._tokens(layout), layout.num_heads)
        if self._site is not None:
            return rows_in_chunks(self._site.trunk, images, self.internal_batch_size, row_bytes), self._site.head
        split = _last_block_split(self.model, images, self.internal_batch_size, row_bytes)
        self._whole_model = split is None
        return (images, self.model) if split is None else split

    def _tokens(self, layout: ViTLayout) -> int:
        """Tokens of the last block's sequence (a prompted ViT's class prompts included)."""
        return layout.num_tokens + (0 if self._site is None else self._site.num_queries)

    def _row_bytes(self, layout: ViTLayout, num_targets: int) -> int:
        """One row of a last-block forward + backward (`last_block_row_bytes`); K of them per 'vjp' row. A
        model without the trunk split runs every block per row: the default estimate."""
        if self._whole_model:
            return super()._row_bytes(layout, num_targets)
        vit = self.model if self._site is None else self._site.vit
        per_target = 1 if self.multi_target == "expand" else num_targets
        return per_target * last_block_row_bytes(vit, self._tokens(layout), layout.num_heads)

    def _extras(self) -> dict[str, Any]:
        return {"variant": self.variant}

    def _chunk(self, chunk: GradientChunk, layout: ViTLayout) -> ChunkMaps:
        inp = chunk.replicated()
        capture = ("attn",) if self.variant == "attn" else ("norm1",)
        site = self._site
        vit = self.model if site is None else site.vit
        with torch.enable_grad(), AttentionProbe(vit, blocks=[-1], capture=capture) as probe:
            logits = chunk.forward(inp)
        last = layout.num_blocks - 1
        with torch.enable_grad():
            image_logits, targets, y = chunk.scores(logits)
            captured = probe.attn[last] if self.variant == "attn" else probe.norm1[last]
            (grad,) = chunk.grads(y, [captured])
        captured = chunk.per_target(captured.detach())
        n_p = layout.num_prefix_tokens if site is None else site.patch_start(layout)
        if self.variant == "attn":
            if site is None:
                a = query_row(captured, layout, self.query)  # [n,K|1,H,P]
                g = query_row(grad, layout, self.query)  # [n,K,H,P]
            elif self.query == "cls":
                a, g = class_token_rows(captured, targets, n_p), class_token_rows(grad, targets, n_p)
            else:
                a, g = captured[..., n_p:, n_p:].mean(-2), grad[..., n_p:, n_p:].mean(-2)
            m, h = attn_cam(a, g)
            return ChunkMaps(m.detach(), targets, image_logits, h.detach())
        m = token_cam(captured[..., n_p:, :], grad[..., n_p:, :])
        return ChunkMaps(m.detach(), targets, image_logits)


# --------------------------------------------------------------------------------------------------------------
# Classic Grad-CAM (CNNs; ViTs dispatch to the token variant).
# --------------------------------------------------------------------------------------------------------------

@register_method(
    "gradcam", signed=False, class_specific=True, needs_grad=True, default_upsample="bilinear",
    default_norm="minmax", cost="1 forward (features without grad) + 1 backward through the head only",
    summary="Classic Grad-CAM: ReLU(Σ_c α_c·A_c) on the last conv stage (timm CNNs); ViTs use norm1 tokens",
    families=("cnn", "vit", "prompted_vit"),
    batched_targets=True, amp_tolerance=0.2,
)
class GradCAM(GradientExplainer):
    """Classic Grad-CAM (Selvaraju et al., arXiv 1610.02391) on `model.forward_features` (posthoc.md §7, §0).

    A = `model.forward_features(x)` ∈ R^{B×C×h×w} (timm CNNs: the last conv stage), α_c = mean_{ij} ∂y/∂A_c[i,j],
    M = ReLU(Σ_c α_c·A_c) on the h×w feature grid, which `patch_maps` keeps. This is pytorch-grad-cam's `GradCAM`
    with the last stage as target layer, before its min-max and resize. The features run once without grad and
    only they are replicated per target. For a ViT (and Prompt-CAM's prompted ViT) the call dispatches to `gradcam_vit`
    with `variant='tokens'`: the ViT's last-block norm1 patch tokens are its feature map.

    Args:
        model: a timm CNN (`forward_features` → [B,C,h,w], `forward_head`), INTR or SCOUTER (their backbone
            feature map), a timm ViT or Prompt-CAM; in eval mode.
        multi_target: "expand" (default; replicate the feature map per target) | "vjp".
        internal_batch_size: rows per pass (images for the features, images×targets for an 'expand' head pass).
            "auto" (default) fits the estimated memory of a pass in 2 GiB (a ViT's estimate; 16 images per
            feature pass of a CNN), None runs one pass; the maps are the same for every value.

    Raises:
        RuntimeError: a BatchNorm layer is in training mode.
    """

    def __init__(self, model: nn.Module, multi_target: str = "expand",
                 internal_batch_size: int | str | None = "auto") -> None:
        super().__init__(model, multi_target, internal_batch_size, query=None)

    def attribute(self, images: torch.Tensor, target: TargetSpec, target_space: str = "logit") -> Attribution:
        if is_vit(self.model) or prompted_backbone(self.model) is not None:
            return GradCAMViT(self.model, variant="tokens", multi_target=self.multi_target,
                              internal_batch_size=self.internal_batch_size).attribute(images, target, target_space)
        _check_state(self.model)
        if not (hasattr(self.model, "forward_features") and hasattr(self.model, "forward_head")):
            raise TypeError(f"{type(self.model).__name__} lacks forward_features/forward_head; "
                            "gradcam needs a timm CNN or a timm ViT")
        model = cast(TimmClassifier, self.model)
        with torch.no_grad():
            feats = rows_in_chunks(model.forward_features, images, self.internal_batch_size,
                                   AUTO_BUDGET_BYTES // CNN_FEATURE_ROWS)
        if feats.dim() != 4:
            raise TypeError(f"forward_features returned shape {tuple(feats.shape)}; gradcam needs a [B,C,h,w] map")
        # A head row holds the replicated feature map, its gradient and the weighted sum: ~4 feature maps.
        row_bytes = 4 * feats[0].numel() * feats.element_size()
        out = self._run_chunks(feats, model.forward_head, target, target_space, self._feature_chunk, row_bytes)
        return Attribution(out.maps, out.targets, out.logits)

    @staticmethod
    def _feature_chunk(chunk: GradientChunk) -> ChunkMaps:
        """α_c = mean_ij ∂y/∂A_c[i,j], M = ReLU(Σ_c α_c·A_c) for one chunk of feature maps [n,C,h,w]."""
        f = chunk.x
        # A fresh leaf: the backward stops at the feature map, which is all Grad-CAM needs.
        inp = chunk.replicated().detach().requires_grad_()
        with torch.enable_grad():
            logits = chunk.forward(inp)
            image_logits, targets, y = chunk.scores(logits)
            (grad,) = chunk.grads(y, [inp])  # [n,K,C,h,w]
        alpha = grad.mean((-2, -1), keepdim=True)
        return ChunkMaps(F.relu((alpha * f.unsqueeze(1)).sum(2)).detach(), targets, image_logits.detach())
