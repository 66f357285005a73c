"""Integrated CDAM (CDAM v3, arXiv 2312.02364v3; posthoc.md §3): CDAM averaged along a scaling path."""

from __future__ import annotations

import torch.nn as nn

from traitlens.explain._registry import register_method
from traitlens.explain.cdam import GeneratorArg, PerturbedCDAM

__all__ = ["IntegratedCDAM"]


@register_method(
    "integrated_cdam", signed=True, class_specific=True, needs_grad=True, default_upsample="nearest",
    default_norm="none",
    cost="1 trunk forward (no grad) + m last-block forward/backward passes, batched [B·m,N,D] and chunked; "
         "memory m·N·D per image",
    summary="Integrated CDAM: mean of Σ_j T_k·∂g/∂T_k along x_k = (k/m)·x, k = 1..m−1 (signed)",
    families=("vit", "prompted_vit"), concept=True,
    batched_targets=True,
)
class IntegratedCDAM(PerturbedCDAM):
    """x_k = α_k·x + ε_k, α_k = k/m (k = 0..m−1); map_k = Σ_j T_k·∂g/∂T_k, T_k = norm1(x_k); map = mean_{k=1..m−1}.

    g = last block → norm → head on x = x^(L−1) from the trunk split (posthoc.md §3). The k = 0 map is dropped
    (and not computed). This is *not* the classic integrated-gradients form (x − x′)·mean-gradient.

    LayerNorm remark: `norm1` is scale-invariant, so T_k = LN(α_k·x) ≈ LN(x) = T for every α_k > 0 (up to LN's ε).
    The path therefore varies only through the residual stream x_k entering the attention/MLP sums of the last
    block, and with noise_level 0 the result is close to vanilla CDAM (equal on a model whose gradient at T does
    not depend on the residual stream).

    `preset='obzai'` reproduces the `obzai` package instead: noise goes onto T (`inject_at='norm1_output'`), the
    path interpolates T itself from 0 with α_i = i/n for i = 0..n (both ends included, all n+1 maps averaged),
    and noise_level defaults to 0.05.

    Args:
        model: a timm VisionTransformer, or a "prompted_vit" model (Prompt-CAM: x = its last-block input,
            class prompts included; y = its logit).
        n_steps: m (n for 'obzai'); default 50. Needs m ≥ 2 for the default preset.
        noise_level: relative noise scale σ_b = noise_level·(max − min) of the injected tensor per image
            (default 0.0; 0.05 with preset='obzai').
        inject_at: 'block_input' (default) or 'norm1_output' (the path then scales T; default for 'obzai').
        preset: None/'cdam' (the CDAM v3 package) or 'obzai'.
        generator: a torch.Generator, one per image (sequence), or None; noise is drawn per (image, step).
        multi_target: 'expand' (default) or 'vjp' for K > 1 targets.
        internal_batch_size: rows (image × step × target) per last-block pass (the no-grad
            trunk: images). "auto" (default) fits the estimated memory of a pass in 2 GiB (docs/performance.md),
            None runs one pass; the maps are the same for every value.
        exclude_prefix: drop the prefix tokens from the map (default True).

    Example:
        >>> exp = explain(model, x, method="integrated_cdam", n_steps=20)  # doctest: +SKIP
    """

    _n_name = "n_steps"

    def __init__(self, model: nn.Module, n_steps: int = 50, noise_level: float | None = None,
                 inject_at: str | None = None, preset: str | None = None, generator: GeneratorArg = None,
                 multi_target: str = "expand", internal_batch_size: int | str | None = "auto",
                 exclude_prefix: bool = True) -> None:
        super().__init__(model, n=n_steps, noise_level=noise_level, inject_at=inject_at, preset=preset,
                         generator=generator, multi_target=multi_target, internal_batch_size=internal_batch_size,
                         exclude_prefix=exclude_prefix, default_noise={"cdam": 0.0, "obzai": 0.05},
                         min_n=1 if preset == "obzai" else 2)

    def alphas(self) -> list[float]:
        if self.preset == "obzai":
            return [i / self.n for i in range(self.n + 1)]
        return [k / self.n for k in range(1, self.n)]  # k = 0 dropped
