"""SmoothGrad (Smilkov et al. 2017, arXiv 1706.03825; posthoc.md §13)."""

from __future__ import annotations

import torch
import torch.nn as nn

from traitlens.explain._base import Explainer, image_size
from traitlens.explain._explanation import Attribution
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
from traitlens.explain._targets import TargetSpec

__all__ = ["SmoothGrad"]


class _NoiseSampler:
    """x_b + ε_{b,s}, ε ~ N(0, σ_b²), drawn as one [n,C,H,W] block per image in image order.

    Drawing image by image (and only when first needed) keeps the memory at n images and makes the
    noise independent of the chunking and of the number of targets: every target of an image sees the
    same noisy samples.
    """

    def __init__(self, images: torch.Tensor, sigma: torch.Tensor, n_samples: int,
                 generator: torch.Generator | None) -> None:
        self.images, self.sigma, self.n, self.generator = images, sigma, n_samples, generator
        self.noise: dict[int, torch.Tensor] = {}
        self.next_image = 0

    def draw(self, b: int) -> torch.Tensor:
        while self.next_image <= b:
            i = self.next_image
            device = self.generator.device if self.generator is not None else self.images.device
            eps = torch.randn((self.n, *self.images.shape[1:]), generator=self.generator, dtype=self.images.dtype,
                              device=device).to(self.images.device)
            self.noise[i] = eps * self.sigma[i]
            self.next_image += 1
        return self.noise[b]

    def __call__(self, b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        out = torch.empty((b.numel(), *self.images.shape[1:]), dtype=self.images.dtype, device=self.images.device)
        for ub in torch.unique(b).tolist():
            mask = b == ub
            out[mask] = self.images[ub] + self.draw(ub)[s[mask]]
            # Images before the smallest one still in use are done (rows come in image order).
            for old in [i for i in self.noise if i < ub]:
                del self.noise[old]
        return out


@register_method(
    "smoothgrad", signed=True, class_specific=True, needs_grad=True, default_upsample="nearest",
    default_norm="none", cost="n forwards + n backwards to the pixels (expanded [B·K·n], chunked)",
    summary="SmoothGrad: mean gradient under Gaussian input noise (σ = 0.15·range); full-resolution map in "
            "extras['pixel_maps']",
    families=("vit", "cnn", "logits"),
)
class SmoothGrad(Explainer):
    """SG = (1/n)·Σ_k ∂y/∂x(x + ε_k), ε_k ~ N(0, σ_b²), σ_b = noise_level·(max x_b − min x_b); then reduce_c.

    posthoc.md §13. The default (CDAM v3 comparison) is signed and **not** multiplied by the input. With
    `multiply_by_input=True` each sample's gradient is multiplied by its own noisy input (x + ε_k), as captum's
    `NoiseTunnel(InputXGradient)` does; with `square=True` the samples are squared before the mean (SmoothGrad²,
    applied after the input product). `extras['pixel_maps']` [B,K,H,W] keeps the full-resolution map,
    `extras['attributions']` [B,K,C,H,W] the per-channel map and `extras['sigma']` [B] the noise σ_b.

    Args:
        model: any image classifier (ViT, CNN, ...), in eval mode.
        n_samples: n (default 50).
        noise_level: σ as a fraction of each image's value range (default 0.15; 0 gives the plain gradient).
        multiply_by_input: multiply each sample's gradient by its noisy input (default False).
        square: average squared samples (SmoothGrad², default False).
        generator: a `torch.Generator` for the noise (None = the global RNG). Noise is drawn as one [n,C,H,W]
            block per image, in image order, on the generator's device.
        channel_reduce: "mean" (reference) | "sum".
        patch_size: pooling patch; None = the ViT's patch size (16 for other models).
        multi_target: "expand" | "vjp"; every target of an image sees the same noise either way.
        internal_batch_size: rows per forward/backward: "auto" (default) fits the estimated memory of a pass in
            2 GiB (16 rows for models other than ViTs), an int fixes it, None = all at once.

    Example:
        >>> g = torch.Generator().manual_seed(0)  # doctest: +SKIP
        >>> exp = explain(model, x, method="smoothgrad", generator=g)  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, n_samples: int = 50, noise_level: float = 0.15,
                 multiply_by_input: bool = False, square: bool = False, generator: torch.Generator | None = None,
                 channel_reduce: str = "mean", patch_size: int | tuple[int, int] | None = None,
                 multi_target: str = "expand", internal_batch_size: int | str | None = "auto") -> None:
        super().__init__(model)
        check_options(channel_reduce, multi_target, internal_batch_size)
        if not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
        if noise_level < 0:
            raise ValueError(f"noise_level must be >= 0, got {noise_level}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.n_samples, self.noise_level = n_samples, noise_level
        self.multiply_by_input, self.square, self.generator = multiply_by_input, square, generator
        self.channel_reduce, self.patch_size = channel_reduce, check_patch_size(patch_size)
        self.multi_target, self.internal_batch_size = multi_target, internal_batch_size

    def _transform(self, g: torch.Tensor, points: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        out = g * points if self.multiply_by_input else g
        return out * out if self.square else out

    def attribute(self, images: torch.Tensor, target: TargetSpec, target_space: str = "logit") -> Attribution:
        check_model_state(self.model)
        patch, _ = patch_geometry(self.model, image_size(images), self.patch_size)
        x = images.detach()
        with torch.no_grad():
            logits = self.model(x)  # resolves top-k targets before the noisy batch is expanded
        targets = target.resolve(logits)
        flat = x.flatten(1)
        sigma = self.noise_level * (flat.amax(1) - flat.amin(1))  # per image, over the whole [C,H,W]
        sampler = _NoiseSampler(x, sigma, self.n_samples, self.generator)
        weights = torch.full((self.n_samples,), 1.0 / self.n_samples, dtype=torch.float64)
        attributions = input_gradients(
            self.model, targets, target_space, points=sampler, num_samples=self.n_samples,
            image_shape=tuple(x.shape[1:]), weights=weights, transform=self._transform,
            multi_target=self.multi_target, internal_batch_size=self.internal_batch_size,
            row_bytes=gradient_row_bytes(self.model, x),
        )
        patch_maps, pixel_maps = pixel_outputs(attributions, patch, self.channel_reduce)
        extras = {"pixel_maps": pixel_maps, "attributions": attributions, "sigma": sigma}
        return Attribution(patch_maps, targets, logits, extras=extras)
