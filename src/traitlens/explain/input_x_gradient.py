"""Input × gradient (Shrikumar et al. 2016, arXiv 1605.01713; posthoc.md §11)."""

from __future__ import annotations

import torch
import torch.nn as nn

from traitlens.explain._base import Explainer, image_size, row_chunks, rows_in_chunks
from traitlens.explain._explanation import Attribution
from traitlens.explain._gradients import _resolve_chunk
from traitlens.explain._pixel import (
    check_model_state,
    check_options,
    check_patch_size,
    gradient_row_bytes,
    input_gradients,
    patch_geometry,
    pixel_outputs,
)
from traitlens.explain._registry import register_method
from traitlens.explain._targets import TargetSpec, target_scores

__all__ = ["InputXGradient"]


@register_method(
    "input_x_gradient", signed=True, class_specific=True, needs_grad=True, default_upsample="nearest",
    default_norm="none", cost="1 forward + 1 backward to the pixels",
    summary="Input × gradient, channel-reduced, sum-pooled per patch; full-resolution map in extras['pixel_maps']",
    families=("vit", "cnn", "logits"),
)
class InputXGradient(Explainer):
    """M = reduce_c(x ⊙ ∂y/∂x), with x the model input (posthoc.md §11). Signed.

    `patch_maps` sum-pool M over p×p patches (§0). `extras['pixel_maps']` [B,K,H,W] keeps M at full
    resolution and `extras['attributions']` [B,K,C,H,W] the per-channel x ⊙ ∂y/∂x (captum's `InputXGradient`).

    Args:
        model: any image classifier (a ViT, a CNN, ...), in eval mode.
        channel_reduce: "mean" (reference) | "sum" over the input channels.
        patch_size: pooling patch; None = the ViT's patch size (16 for other models).
        multi_target: "expand" (default: replicate the images K times) | "vjp" (one forward, K batched VJPs).
        internal_batch_size: rows per forward/backward: images (for one target or 'vjp'), or images×targets
            when the images are replicated for K targets. "auto" (default) fits the estimated memory of a pass
            in 2 GiB (docs/performance.md), None runs one pass; the maps are the same for every value.

    Example:
        >>> exp = explain(model, x, method="input_x_gradient")  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, channel_reduce: str = "mean", patch_size: int | tuple[int, int] | None = None,
                 multi_target: str = "expand", internal_batch_size: int | str | None = "auto") -> None:
        super().__init__(model)
        check_options(channel_reduce, multi_target, internal_batch_size)
        self.channel_reduce, self.patch_size = channel_reduce, check_patch_size(patch_size)
        self.multi_target, self.internal_batch_size = multi_target, internal_batch_size

    def attribute(self, images: torch.Tensor, target: TargetSpec, target_space: str = "logit") -> Attribution:
        check_model_state(self.model)
        patch, _ = patch_geometry(self.model, image_size(images), self.patch_size)
        K = target.num_targets
        row_bytes = gradient_row_bytes(self.model, images)
        if K == 1 or self.multi_target == "vjp":
            # One forward per chunk of images gives the logits (and the top-k targets) and the graph for every
            # target's gradient; a 'vjp' image carries the gradients of its K targets.
            parts = [self._one_pass(images[start:stop], target, target_space, start, stop)
                     for start, stop in row_chunks(images.shape[0], self.internal_batch_size, row_bytes * K)]
            attributions, targets, logits = (torch.cat([p[i] for p in parts]) for i in range(3))
        else:
            # 'expand' with K > 1: the targets (top-k) must be known before the images are replicated.
            with torch.no_grad():
                logits = rows_in_chunks(self.model, images, self.internal_batch_size, row_bytes)
            targets = target.resolve(logits)
            attributions = input_gradients(
                self.model, targets, target_space, points=lambda b, s: images[b], num_samples=1,
                image_shape=tuple(images.shape[1:]), transform=lambda g, pts, s: g * pts,
                multi_target="expand", internal_batch_size=self.internal_batch_size, row_bytes=row_bytes,
            )
        patch_maps, pixel_maps = pixel_outputs(attributions, patch, self.channel_reduce)
        extras = {"pixel_maps": pixel_maps.detach(), "attributions": attributions.detach()}
        return Attribution(patch_maps.detach(), targets, logits.detach(), extras=extras)

    def _one_pass(self, images: torch.Tensor, target: TargetSpec, target_space: str, start: int, stop: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x ⊙ ∂y/∂x [n,K,C,H,W], targets [n,K], logits [n,C]) of images start..stop−1, one forward and backward."""
        K = target.num_targets
        with torch.enable_grad():  # also under a caller's torch.no_grad(), like every gradient method
            x = images.detach().requires_grad_()
            logits = self.model(x)
            targets = _resolve_chunk(target, logits, start, stop)
            y = target_scores(logits, targets, target_space)  # [n,K]
            if K == 1:
                (g,) = torch.autograd.grad(y.sum(), x)
                g = g.unsqueeze(1)
            else:
                one_hots = torch.eye(K, dtype=y.dtype, device=y.device).unsqueeze(1).expand(K, *y.shape)
                (g,) = torch.autograd.grad(y, x, grad_outputs=one_hots, is_grads_batched=True)
                g = g.transpose(0, 1)
        return x.detach().unsqueeze(1) * g, targets, logits.detach()
