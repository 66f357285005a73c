"""Smooth CDAM (CDAM v3, arXiv 2312.02364v3; posthoc.md §3): CDAM averaged over noisy last-block inputs."""

from __future__ import annotations

import torch.nn as nn

from traitlens.explain._registry import register_method
from traitlens.explain.cdam import GeneratorArg, PerturbedCDAM

__all__ = ["SmoothCDAM"]


@register_method(
    "smooth_cdam", signed=True, class_specific=True, needs_grad=True, default_upsample="nearest",
    default_norm="none",
    cost="1 trunk forward (no grad) + m last-block forward/backward passes, batched [B·m,N,D] and chunked; "
         "memory m·N·D per image",
    summary="Smooth CDAM: mean of CDAM over m noisy copies of the last block's input (signed)",
    families=("vit", "prompted_vit"), concept=True,
    batched_targets=True, amp_tolerance=0.1,
)
class SmoothCDAM(PerturbedCDAM):
    """map = (1/m) Σ_{k=1..m} CDAM_g(x + ε_k), ε_k ~ N(0, σ_b²) i.i.d., σ_b = noise_level·(max x_b − min x_b).

    g = last block → norm → head on x = x^(L−1) from the trunk split (posthoc.md §3); the range is taken over
    the whole [N,D] token tensor of each image. The result is signed. Concept targets work as in CDAM.

    LayerNorm remark: `blocks[-1].norm1` removes each token's mean and scale, so with block-input injection the
    noise moves T only relative to that token's own spread (σ_b is set by the range of the whole image tensor).

    Args:
        model: a timm VisionTransformer, or a "prompted_vit" model (Prompt-CAM: x = its last-block input,
            class prompts included; y = its logit).
        n_samples: m, noisy copies per image (default 50).
        noise_level: relative noise scale (default 0.05 in both presets).
        inject_at: 'block_input' (default: noise on x^(L−1)) or 'norm1_output' (noise on T, the `obzai` package;
            σ_b then uses the range of T_b).
        preset: None/'cdam' (the CDAM v3 package) or 'obzai' (inject_at='norm1_output').
        generator: a torch.Generator, one per image (a sequence: a batched run then equals per-image runs with
            the same seeds), or None for the global RNG. Noise is drawn per (image, sample), image by image.
        multi_target: 'expand' (default) or 'vjp' for K > 1 targets.
        internal_batch_size: rows (image × sample × target) per last-block pass (the no-grad
            trunk: images). "auto" (default) fits the estimated memory of a pass in 2 GiB (docs/performance.md),
            None runs one pass; the maps are the same for every value.
        exclude_prefix: drop the prefix tokens from the map (default True; False also returns
            `extras["prefix_scores"]`).

    Example:
        >>> g = torch.Generator().manual_seed(0)  # doctest: +SKIP
        >>> exp = explain(model, x, method="smooth_cdam", n_samples=20, generator=g)  # doctest: +SKIP
    """

    _n_name = "n_samples"

    def __init__(self, model: nn.Module, n_samples: int = 50, noise_level: float | None = None,
                 inject_at: str | None = None, preset: str | None = None, generator: GeneratorArg = None,
                 multi_target: str = "expand", internal_batch_size: int | str | None = "auto",
                 exclude_prefix: bool = True) -> None:
        super().__init__(model, n=n_samples, noise_level=noise_level, inject_at=inject_at, preset=preset,
                         generator=generator, multi_target=multi_target, internal_batch_size=internal_batch_size,
                         exclude_prefix=exclude_prefix, default_noise={"cdam": 0.05, "obzai": 0.05}, min_n=1)

    def alphas(self) -> list[float]:
        return [1.0] * self.n
