"""Integrated gradients (Sundararajan, Taly & Yan, ICML 2017, arXiv 1703.01365; posthoc.md §12)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from traitlens.backbones.preprocess import normalize
from traitlens.explain._base import Explainer, image_size
from traitlens.explain._explanation import Attribution
from traitlens.explain._pixel import (
    check_model_state,
    check_options,
    check_patch_size,
    gaussian_blur,
    gradient_row_bytes,
    input_gradients,
    patch_geometry,
    pixel_outputs,
)
from traitlens.explain._registry import register_method
from traitlens.explain._targets import TargetSpec, target_scores

__all__ = ["METHODS", "IntegratedGradients", "path_coefficients"]

METHODS = ("riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre")
BASELINES = ("zero", "black", "blur")


def path_coefficients(method: str, n_steps: int, trapezoid_weights: str = "exact") -> tuple[torch.Tensor, torch.Tensor]:
    """Points α_s ∈ [0,1] on the straight path and quadrature weights w_s (float64, [n_steps] each).

    'riemann_right' (reference): α = k/m, k = 1..m, w = 1/m. 'riemann_left' / 'riemann_middle': k/m, k = 0..m−1,
    and (k+½)/m. 'riemann_trapezoid': α = linspace(0, 1, m); `trapezoid_weights='exact'` gives the trapezoid rule
    (1/(m−1), ends halved; the weights sum to 1), 'captum' reproduces captum 0.9 (1/m, ends halved; they sum to
    (m−1)/m, so its IG of a linear model is (m−1)/m of the exact value). 'gausslegendre': numpy's Gauss–Legendre
    nodes and weights mapped from [−1,1] to [0,1] (captum's default).
    """
    m = n_steps
    k = torch.arange(m, dtype=torch.float64)
    if method == "riemann_right":
        return (k + 1) / m, torch.full((m,), 1.0 / m, dtype=torch.float64)
    if method == "riemann_left":
        return k / m, torch.full((m,), 1.0 / m, dtype=torch.float64)
    if method == "riemann_middle":
        return (k + 0.5) / m, torch.full((m,), 1.0 / m, dtype=torch.float64)
    if method == "riemann_trapezoid":
        if m < 2:
            raise ValueError("riemann_trapezoid needs n_steps >= 2")
        step = 1.0 / (m - 1) if trapezoid_weights == "exact" else 1.0 / m
        w = torch.full((m,), step, dtype=torch.float64)
        w[0] /= 2
        w[-1] /= 2
        return k / (m - 1), w
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(m)
        return torch.from_numpy(0.5 * (1 + nodes)), torch.from_numpy(0.5 * weights)
    raise ValueError(f"unknown integration '{method}'; choose from {METHODS}")


@register_method(
    "integrated_gradients", signed=True, class_specific=True, needs_grad=True, default_upsample="nearest",
    default_norm="none", cost="m forwards + m backwards to the pixels (expanded [B·K·m], chunked)",
    summary="Integrated gradients (right Riemann sum, m=50, zero baseline); full-resolution map in "
            "extras['pixel_maps']",
    families=("vit", "cnn", "logits"),
)
class IntegratedGradients(Explainer):
    """IG = (x − x′) ⊙ Σ_s w_s·∂y/∂x(x′ + α_s(x − x′)), then reduce_c (posthoc.md §12). Signed.

    The default is the CDAM v3 comparison: x′ = 0 in the model's input space and a right Riemann sum over
    α = k/50, k = 1..50 (the k = 0 gradient is excluded), then the mean over RGB. `extras['convergence_delta']`
    [B,K] holds the completeness gap δ = ΣIG − (y(x) − y(x′)) (before channel reduction), `extras['pixel_maps']`
    [B,K,H,W] the full-resolution map, `extras['attributions']` [B,K,C,H,W] the per-channel IG.

    Args:
        model: any image classifier (ViT, CNN, ...), in eval mode.
        n_steps: m, gradient evaluations along the path (default 50).
        integration: the quadrature, captum's `method` (renamed: `explain` takes `method` for the registry name):
            "riemann_right" (reference) | "riemann_left" | "riemann_middle" | "riemann_trapezoid" |
            "gausslegendre" (captum's default); see `path_coefficients`.
        baseline: "zero" (reference) | "black" (pixel value 0 mapped through the model's mean/std) | "blur"
            (the image blurred with a Gaussian of `blur_sigma` pixels) | a number | a tensor broadcastable to
            the images.
        blur_sigma: σ in pixels of the 'blur' baseline (default 10).
        trapezoid_weights: "exact" (default) | "captum" (captum's trapezoid weights; see `path_coefficients`).
        channel_reduce: "mean" (reference) | "sum".
        patch_size: pooling patch; None = the ViT's patch size (16 for other models).
        multi_target: "expand" (rows per image, target and step) | "vjp" (rows per image and step, K VJPs each).
        internal_batch_size: rows per forward/backward: "auto" (default) fits the estimated memory of a pass in
            2 GiB (16 rows for models other than ViTs), an int fixes it, None = all at once.

    Example:
        >>> exp = explain(model, x, method="integrated_gradients", n_steps=32)  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, n_steps: int = 50, integration: str = "riemann_right",
                 baseline: str | float | torch.Tensor = "zero", blur_sigma: float = 10.0,
                 trapezoid_weights: str = "exact", channel_reduce: str = "mean",
                 patch_size: int | tuple[int, int] | None = None, multi_target: str = "expand",
                 internal_batch_size: int | str | None = "auto") -> None:
        super().__init__(model)
        check_options(channel_reduce, multi_target, internal_batch_size)
        if not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
        if integration not in METHODS:
            raise ValueError(f"unknown integration '{integration}'; choose from {METHODS}")
        if trapezoid_weights not in ("exact", "captum"):
            raise ValueError(f"unknown trapezoid_weights '{trapezoid_weights}'; choose 'exact' or 'captum'")
        if isinstance(baseline, str) and baseline not in BASELINES:
            raise ValueError(f"unknown baseline '{baseline}'; choose from {BASELINES}, a number or a tensor")
        if not isinstance(baseline, (str, int, float, torch.Tensor)) or isinstance(baseline, bool):
            raise TypeError(f"baseline must be one of {BASELINES}, a number or a tensor, got {type(baseline).__name__}")
        if blur_sigma <= 0:
            raise ValueError(f"blur_sigma must be positive, got {blur_sigma}")
        self.alphas, self.weights = path_coefficients(integration, n_steps, trapezoid_weights)
        self.n_steps, self.integration, self.baseline, self.blur_sigma = n_steps, integration, baseline, blur_sigma
        self.channel_reduce, self.patch_size = channel_reduce, check_patch_size(patch_size)
        self.multi_target, self.internal_batch_size = multi_target, internal_batch_size

    def baselines(self, images: torch.Tensor) -> torch.Tensor:
        """x′ [B,C,H,W] for `images` in the model's input space."""
        if isinstance(self.baseline, torch.Tensor):
            base = self.baseline.to(images)
            try:
                return torch.broadcast_to(base, images.shape).clone()
            except RuntimeError as err:
                raise ValueError(f"baseline of shape {tuple(base.shape)} does not broadcast to the images "
                                 f"{tuple(images.shape)}") from err
        if isinstance(self.baseline, (int, float)):
            return torch.full_like(images, float(self.baseline))
        if self.baseline == "zero":
            return torch.zeros_like(images)
        if self.baseline == "black":
            return normalize(self.model, torch.zeros_like(images))
        return gaussian_blur(images, self.blur_sigma)

    def attribute(self, images: torch.Tensor, target: TargetSpec, target_space: str = "logit") -> Attribution:
        check_model_state(self.model)
        patch, _ = patch_geometry(self.model, image_size(images), self.patch_size)
        x = images.detach()
        base = self.baselines(x)
        with torch.no_grad():
            # y(x) and y(x′) for the completeness gap; the logits of x also resolve top-k targets.
            logits = self.model(x)
            base_logits = self.model(base)
        targets = target.resolve(logits)
        alphas = self.alphas.to(x)
        diff = x - base
        grads = input_gradients(
            self.model, targets, target_space,
            points=lambda b, s: base[b] + alphas[s].view(-1, 1, 1, 1) * diff[b],
            num_samples=self.n_steps, image_shape=tuple(x.shape[1:]), weights=self.weights,
            multi_target=self.multi_target, internal_batch_size=self.internal_batch_size,
            row_bytes=gradient_row_bytes(self.model, x),
        )
        attributions = diff.unsqueeze(1) * grads  # [B,K,C,H,W]
        gap = target_scores(logits, targets, target_space) - target_scores(base_logits, targets, target_space)
        delta = attributions.flatten(2).sum(-1) - gap
        patch_maps, pixel_maps = pixel_outputs(attributions, patch, self.channel_reduce)
        extras = {"pixel_maps": pixel_maps, "attributions": attributions, "convergence_delta": delta}
        return Attribution(patch_maps, targets, logits, extras=extras)
