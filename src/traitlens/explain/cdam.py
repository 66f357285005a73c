"""CDAM: class-discriminative attention maps (Brocki & Chung, arXiv 2312.02364; posthoc.md §1–§3).

Gradient × input taken at one place, the tokens T = `blocks[-1].norm1`(x^(L−1)) that enter the last block's
attention: S[b,i] = Σ_j T[b,n_p+i,j]·∂y/∂T[b,n_p+i,j]. The trunk (blocks 0..L−2) runs once without grad;
only the last block, `norm` and the head are differentiated.

This module also holds the engine shared by the variants (`smooth_cdam`, `integrated_cdam`): one pass of the
last block on given tokens (optionally with T replaced), with several targets by 'expand' or 'vjp', chunked.
On a "prompted_vit" model (Prompt-CAM) the same engine runs on its `LastBlock` (`_sites`): T is the backbone's
last-block norm1 output over the class tokens, prefix and patches, y is the model's logit, read from its class token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, cast

import torch
import torch.nn as nn

from traitlens.backbones.introspect import ViTLayout
from traitlens.backbones.probe import AttentionProbe
from traitlens.backbones.protocols import as_vit
from traitlens.backbones.trunk import head_forward, trunk_forward
from traitlens.explain._base import (
    Explainer,
    last_block_row_bytes,
    row_chunks,
    rows_in_chunks,
    sequence_bytes,
)
from traitlens.explain._explanation import Attribution
from traitlens.explain._gradients import _check_batch_size, _resolve_chunk, _rows_per_pass
from traitlens.explain._registry import register_method
from traitlens.explain._sites import LastBlock, prompted_site
from traitlens.explain._targets import TargetSpec, target_scores

__all__ = ["CDAM"]

MULTI_TARGETS = ("expand", "vjp")
#: rows(idx) → (tokens entering the last block [n,N,D], replacement for T = norm1 output [n,N,D] or None)
RowFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def check_grad_mode(name: str) -> None:
    """Refuse `torch.inference_mode` (posthoc.md §0): tensors made there can never join an autograd graph."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(f"{name} cannot run under torch.inference_mode(); it needs gradients")


def check_multi_target(multi_target: str, internal_batch_size: int | str | None) -> None:
    """Validate the shared batching options."""
    if multi_target not in MULTI_TARGETS:
        raise ValueError(f"unknown multi_target '{multi_target}'; choose from {MULTI_TARGETS}")
    _check_batch_size(internal_batch_size)


def trunk_tokens(model: nn.Module, images: torch.Tensor, layout: ViTLayout, site: LastBlock | None,
                 internal_batch_size: int | str | None) -> torch.Tensor:
    """x^(L−1) from the no-grad trunk, run over chunks of images so that a large batch stays within the budget."""
    vit = model if site is None else site.vit
    num_tokens = layout.num_tokens + (0 if site is None else site.num_queries)
    trunk = (lambda t: trunk_forward(model, t, layout.num_blocks - 1)) if site is None else site.trunk
    return rows_in_chunks(trunk, images, internal_batch_size, sequence_bytes(vit, num_tokens, layout.num_heads))


def concept_of(target: TargetSpec, target_space: str, model: nn.Module, site: LastBlock | None = None) -> Any:
    """The target's `Concept` (checked against `model`) or None for class targets."""
    concept = target.concept
    if concept is None:
        return None
    if site is not None:
        raise ValueError(f"{type(model).__name__} has one latent per class token, not one image latent; a Concept "
                         "target needs a timm ViT's pre-logits (posthoc.md §2)")
    if target_space != "logit":
        raise ValueError(f"target_space='{target_space}' applies to class targets; a Concept target explains its "
                         "similarity score, so leave target_space='logit'")
    if hasattr(concept, "check_model"):
        concept.check_model(model)
    return concept


def last_block_forward(
    model: nn.Module, tokens: torch.Tensor, concept: Any = None, site: LastBlock | None = None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(logits, latent) from tokens x^(L−1) entering the last block: last block → norm → forward_head.

    The latent l = forward_head(..., pre_logits=True) is only computed for concept targets; the logits are then
    read off it (without grad), or None for headless models (`num_classes=0`). With a `site` (prompted ViT) the
    logits are `site.head(tokens)` and there is no latent.
    """
    if site is not None:
        return site.head(tokens), None
    vit = as_vit(model)
    k = len(vit.blocks) - 1
    if concept is None:
        return head_forward(model, tokens, k, readout_only=True), None
    lat = head_forward(model, tokens, k, pre_logits=True, readout_only=True)
    if not getattr(model, "num_classes", 0):
        return None, lat
    head = vit.get_classifier() if hasattr(model, "get_classifier") else vit.head
    with torch.no_grad():
        logits = head(lat)
    return logits, lat


def cdam_pass(
    model: nn.Module,
    tokens: torch.Tensor,
    targets: torch.Tensor | Callable[[torch.Tensor | None], torch.Tensor],
    *,
    concept: Any = None,
    target_space: str = "logit",
    t_override: torch.Tensor | None = None,
    site: LastBlock | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """One forward + one backward of the last block: token scores Σ_j T·∂y/∂T for every target.

    Args:
        model: a timm ViT.
        tokens: x^(L−1) [M,N,D] entering the last block.
        targets: class ids [M,K], or a function resolving them from this pass's logits.
        concept: a Concept target (then y = concept.score(latent), K = 1).
        target_space: 'logit' | 'prob' | 'log_prob' for class targets.
        t_override: replaces the output of `blocks[-1].norm1` (noise injected at T, posthoc.md §3); the map
            and the gradient are then taken at this T̃.
        site: the last block of a prompted ViT (None: `model` is a timm ViT).

    Returns:
        (scores [M,K,N] detached, logits [M,C] detached or None, targets [M,K]). With K > 1 the targets are
        backpropagated in one call with `is_grads_batched` and one-hot grad_outputs ('vjp').
    """
    vit = model if site is None else site.vit
    norm1 = as_vit(vit).blocks[-1].norm1
    handle = None
    with torch.enable_grad():
        try:
            if t_override is not None:
                t_new = t_override.detach().requires_grad_()
                # Registered before the probe's hook, so the probe captures the replaced tensor.
                handle = norm1.register_forward_hook(lambda _m, _i, _o: t_new)
            with AttentionProbe(vit, blocks=[-1], capture=("norm1",)) as probe:
                logits, lat = last_block_forward(model, tokens, concept, site)
        finally:
            if handle is not None:
                handle.remove()
        T = probe.norm1[-1]
        if callable(targets):
            targets = targets(logits)
        # Without a concept the logits exist: only headless models (concept targets only) give None.
        y = (concept.score(lat).unsqueeze(-1) if concept is not None
             else target_scores(cast(torch.Tensor, logits), targets, target_space))
        M, K = y.shape
        if K == 1:
            # Images never mix in an eval-mode ViT, so the gradient of the sum is every image's own gradient.
            (G,) = torch.autograd.grad(y.sum(), T)
            scores = (T.detach() * G).sum(-1).unsqueeze(1)
        else:
            one_hot = torch.eye(K, dtype=y.dtype, device=y.device).unsqueeze(1).expand(K, M, K).contiguous()
            (G,) = torch.autograd.grad(y, T, grad_outputs=one_hot, is_grads_batched=True)  # [K,M,N,D]
            scores = (T.detach().unsqueeze(0) * G).sum(-1).permute(1, 0, 2)
    return scores.detach(), None if logits is None else logits.detach(), targets


def cdam_rows(
    model: nn.Module,
    rows: RowFn,
    targets: torch.Tensor,
    *,
    concept: Any = None,
    target_space: str = "logit",
    multi_target: str = "expand",
    internal_batch_size: int | str | None = None,
    site: LastBlock | None = None,
    row_bytes: int = 0,
) -> torch.Tensor:
    """Token scores [M,K,N] for M rows of last-block inputs and their targets [M,K], chunked.

    'expand' turns (row, target) pairs into rows of one-target passes (the tokens x^(L−1) are replicated, never
    the trunk); 'vjp' runs each row once and backpropagates its K targets with `is_grads_batched`.
    `internal_batch_size` bounds the rows per pass (None: all in one pass; 'auto': as many as fit in the budget
    at `row_bytes` per one-target row; a 'vjp' row counts K times).
    """
    M, K = targets.shape
    device = targets.device
    kw = {"concept": concept, "target_space": target_space, "site": site}
    if K == 1 or multi_target == "vjp":
        step = _rows_per_pass(internal_batch_size, row_bytes * K) or M
        out = []
        for start in range(0, M, step):
            idx = torch.arange(start, min(M, start + step), device=device)
            tokens, t_over = rows(idx)
            out.append(cdam_pass(model, tokens, targets[idx], t_override=t_over, **kw)[0])
        return torch.cat(out)
    total = M * K
    step = _rows_per_pass(internal_batch_size, row_bytes) or total
    out = []
    for start in range(0, total, step):
        r = torch.arange(start, min(total, start + step), device=device)
        src, col = r // K, r % K
        tokens, t_over = rows(src)
        out.append(cdam_pass(model, tokens, targets[src, col].unsqueeze(1), t_override=t_over, **kw)[0][:, 0])
    return torch.cat(out).view(M, K, -1)


def to_attribution(
    scores: torch.Tensor, layout: ViTLayout, targets: torch.Tensor, logits: torch.Tensor | None,
    exclude_prefix: bool, extras: dict[str, Any] | None = None, num_queries: int = 0,
) -> Attribution:
    """Token scores [B,K,N] → patch maps [B,K,g_h,g_w]; prefix-token scores go to extras unless excluded.

    `num_queries` class tokens (a prompted ViT's) come before the prefix; they count as prefix here.
    """
    B, K, N = scores.shape
    n_p = num_queries + layout.num_prefix_tokens
    if num_queries + layout.num_tokens != N:
        raise RuntimeError(f"the last block saw {N} tokens, the layout expects {num_queries + layout.num_tokens} "
                           f"({n_p} prefix + {layout.num_patches} patches)")
    extras = dict(extras or {})
    if not exclude_prefix:
        extras["prefix_scores"] = scores[..., :n_p]
    patch = scores[..., n_p:].reshape(B, K, *layout.grid)
    return Attribution(patch.contiguous(), targets, logits, extras=extras)


@register_method(
    "cdam", signed=True, class_specific=True, needs_grad=True, default_upsample="nearest", default_norm="none",
    cost="1 forward (trunk without grad) + 1 backward through the last block only; memory N·D per image",
    summary="Class-discriminative attention maps: Σ_j T·∂y/∂T at the last block's norm1 tokens (signed)",
    families=("vit", "prompted_vit"), concept=True,
    batched_targets=True, amp_tolerance=0.1,
)
class CDAM(Explainer):
    """Vanilla CDAM (posthoc.md §1): S[b,i] = Σ_j T[b,n_p+i,j]·G[b,n_p+i,j], T = blocks[−1].norm1(x^(L−1)), G = ∂y/∂T.

    Signed: positive = evidence for the target, negative = counter-evidence. No layer or head aggregation. With a
    `Concept` target (§2), y = ⟨l(x), v⟩ or cos(l(x), v) with l the pre-logits computed from the last-block graph.
    The CLS-token reading (attention scaled by a class-dependent factor) assumes `global_pool='token'`; other
    pooling warns and still runs. On Prompt-CAM ("prompted_vit") T is the backbone's last-block norm1 output,
    y = the model's logit for the target (read from that class's prompt token), and the map covers the patches.

    Args:
        model: a timm VisionTransformer (the trunk split needs `_pos_embed`, `norm`, `forward_head`) or a
            "prompted_vit" model (posthoc.md §0 "Model families").
        exclude_prefix: drop the n_p prefix tokens (CLS, registers, distillation) from the map (default True).
            With False their scores are also returned in `extras["prefix_scores"]` [B,K,n_p] (on Prompt-CAM
            [B,K,C+n_p], the class prompts first).
        multi_target: several targets per image by 'expand' (default; replicate x^(L−1) K times, rerun only the
            last block) or 'vjp' (one pass, `is_grads_batched` with one-hot grad_outputs).
        internal_batch_size: rows per pass: images for the no-grad trunk and for top-1 or 'vjp', (image, target)
            pairs for 'expand'. "auto" (default) fits the estimated memory of a pass in 2 GiB
            (docs/performance.md), None runs one pass; the maps are the same for every value.

    Example:
        >>> exp = explain(model, x, method="cdam", target="topk:3")  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, exclude_prefix: bool = True, multi_target: str = "expand",
                 internal_batch_size: int | str | None = "auto") -> None:
        super().__init__(model)
        check_multi_target(multi_target, internal_batch_size)
        self.exclude_prefix = bool(exclude_prefix)
        self.multi_target = multi_target
        self.internal_batch_size = internal_batch_size

    def attribute(self, images: torch.Tensor, target: TargetSpec, target_space: str = "logit") -> Attribution:
        check_grad_mode(self.info.name)
        layout = self.layout(images)
        site = prompted_site(self.model)
        concept = concept_of(target, target_space, self.model, site)
        x = trunk_tokens(self.model, images, layout, site, self.internal_batch_size)
        vit = self.model if site is None else site.vit
        row_bytes = last_block_row_bytes(vit, int(x.shape[1]), layout.num_heads)
        kw = {"concept": concept, "target_space": target_space, "site": site}
        K = target.num_targets
        if K == 1 or self.multi_target == "vjp":
            # One last-block forward per chunk gives the logits to resolve top-k targets and the graph to
            # differentiate; a 'vjp' image carries the gradients of its K targets.
            parts = [cdam_pass(self.model, x[start:stop], partial(_resolve_chunk, target, start=start, stop=stop), **kw)
                     for start, stop in row_chunks(x.shape[0], self.internal_batch_size, row_bytes * K)]
            scores = torch.cat([p[0] for p in parts])
            logits = None if parts[0][1] is None else torch.cat([cast(torch.Tensor, p[1]) for p in parts])
            targets = torch.cat([p[2] for p in parts])
        else:
            with torch.no_grad():
                logits = rows_in_chunks(lambda t: cast(torch.Tensor, last_block_forward(self.model, t, concept,
                                                                                        site)[0]),
                                        x, self.internal_batch_size, row_bytes)
            targets = target.resolve(logits)
            scores = cdam_rows(self.model, lambda idx: (x[idx], None), targets, multi_target="expand",
                               internal_batch_size=self.internal_batch_size, row_bytes=row_bytes, **kw)
        return to_attribution(scores, layout, targets, logits, self.exclude_prefix,
                              num_queries=0 if site is None else site.num_queries)


GeneratorArg = torch.Generator | Sequence[torch.Generator] | None


class PerturbedCDAM(Explainer):
    """Shared machinery of Smooth and Integrated CDAM (posthoc.md §3); not registered itself.

    Both run g = (last block → norm → head) on x = x^(L−1) from the trunk split. Row s of image b is
    α_s·base_b + ε_{b,s}, where base is x (`inject_at='block_input'`) or T = norm1(x) (`'norm1_output'`),
    ε_{b,s} ~ N(0, σ_b²) i.i.d. with σ_b = noise_level·(max(base_b) − min(base_b)) over the whole [N,D] tensor of
    image b. The map is mean_s Σ_j T̃·∂g/∂T̃ at the rows' own T̃. Subclasses define the α schedule.
    """

    PRESETS: tuple[str, ...] = ("cdam", "obzai")
    INJECT_AT: tuple[str, ...] = ("block_input", "norm1_output")

    def __init__(self, model: nn.Module, *, n: int, noise_level: float | None, inject_at: str | None,
                 preset: str | None, generator: GeneratorArg, multi_target: str,
                 internal_batch_size: int | str | None,
                 exclude_prefix: bool, default_noise: dict[str, float], min_n: int) -> None:
        super().__init__(model)
        preset = preset or "cdam"
        if preset not in self.PRESETS:
            raise ValueError(f"unknown preset '{preset}'; choose from {self.PRESETS}")
        inject_at = inject_at or ("norm1_output" if preset == "obzai" else "block_input")
        if inject_at not in self.INJECT_AT:
            raise ValueError(f"unknown inject_at '{inject_at}'; choose from {self.INJECT_AT}")
        if isinstance(n, bool) or not isinstance(n, int) or n < min_n:
            raise ValueError(f"{self._n_name} must be an int ≥ {min_n}, got {n!r}")
        noise_level = default_noise[preset] if noise_level is None else float(noise_level)
        if noise_level < 0:
            raise ValueError(f"noise_level must be ≥ 0, got {noise_level}")
        check_multi_target(multi_target, internal_batch_size)
        if generator is not None and not isinstance(generator, torch.Generator):
            generator = list(generator)
            if not all(isinstance(g, torch.Generator) for g in generator):
                raise TypeError("generator must be a torch.Generator, a sequence of them (one per image), or None")
        self.n, self.noise_level, self.inject_at, self.preset = n, noise_level, inject_at, preset
        self.generator = generator
        self.multi_target, self.internal_batch_size = multi_target, internal_batch_size
        self.exclude_prefix = bool(exclude_prefix)

    _n_name = "n"

    def alphas(self) -> list[float]:
        """The α of each computed row (rows dropped by the schedule are not computed at all)."""
        raise NotImplementedError

    def _noise(self, base: torch.Tensor, m: int) -> _ImageNoise | None:
        """ε_{b,s}, drawn image by image (in order) so a per-image generator makes batched = per-image runs."""
        if self.noise_level == 0:
            return None
        B = base.shape[0]
        gens: Sequence[torch.Generator | None]
        if isinstance(self.generator, list):
            if len(self.generator) != B:
                raise ValueError(f"got {len(self.generator)} generators for {B} images; pass one per image")
            gens = self.generator
        else:
            gens = [self.generator] * B
        flat = base.flatten(1)
        sigma = self.noise_level * (flat.amax(1) - flat.amin(1))  # [B], per image over the whole [N,D]

        def draw(b: int) -> torch.Tensor:
            g = gens[b]
            dev = g.device if g is not None else base.device
            z = torch.randn((m, *base.shape[1:]), generator=g, device=dev, dtype=base.dtype).to(base.device)
            return z * sigma[b]

        return _ImageNoise(draw)

    def attribute(self, images: torch.Tensor, target: TargetSpec, target_space: str = "logit") -> Attribution:
        check_grad_mode(self.info.name)
        layout = self.layout(images)
        site = prompted_site(self.model)
        concept = concept_of(target, target_space, self.model, site)
        x = trunk_tokens(self.model, images, layout, site, self.internal_batch_size)
        vit = self.model if site is None else site.vit
        row_bytes = last_block_row_bytes(vit, int(x.shape[1]), layout.num_heads)

        def clean(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # Clean pass: logits to resolve the targets, and T for injection at the norm1 output.
            with torch.no_grad(), AttentionProbe(vit, blocks=[-1], capture=("norm1",)) as probe:
                lg, _ = last_block_forward(self.model, t, concept, site)
            return cast(torch.Tensor, lg), probe.norm1[-1]

        passes = [clean(x[start:stop]) for start, stop in row_chunks(x.shape[0], self.internal_batch_size, row_bytes)]
        logits = passes[0][0] if len(passes) == 1 else torch.cat([p[0] for p in passes])
        targets = target.resolve(logits)
        base = x if self.inject_at == "block_input" else (
            passes[0][1] if len(passes) == 1 else torch.cat([p[1] for p in passes]))
        alphas = torch.tensor(self.alphas(), dtype=x.dtype, device=x.device)
        m = alphas.numel()
        noise = self._noise(base, m)

        def rows(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            b, s = idx // m, idx % m
            moved = alphas[s].view(-1, 1, 1) * base[b]
            if noise is not None:
                moved = moved + noise.rows(b, s)
            return (moved, None) if self.inject_at == "block_input" else (x[b], moved)

        B, K = targets.shape
        row_targets = targets.repeat_interleave(m, dim=0)  # row b·m + s explains image b's targets
        scores = cdam_rows(self.model, rows, row_targets, concept=concept, target_space=target_space,
                           multi_target=self.multi_target, internal_batch_size=self.internal_batch_size, site=site,
                           row_bytes=row_bytes)
        scores = scores.view(B, m, K, -1).mean(1)
        return to_attribution(scores, layout, targets, logits, self.exclude_prefix,
                              extras={"n_rows": m, "noise_level": self.noise_level, "inject_at": self.inject_at},
                              num_queries=0 if site is None else site.num_queries)


class _ImageNoise:
    """The noise ε_{b,s} of the rows of a pass, drawn one image at a time and dropped once passed.

    Passes visit rows in image order, so drawing image b's m samples when a pass first needs them (every earlier
    image first) consumes a shared generator in the same order as drawing all images up front: the same noise,
    with memory for the images of one pass instead of the whole batch.
    """

    def __init__(self, draw: Callable[[int], torch.Tensor]) -> None:
        self._draw = draw
        self._drawn: dict[int, torch.Tensor] = {}
        self._next = 0

    def rows(self, b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """ε for rows (image b[i], sample s[i]) → [n,N,D]."""
        first, last = int(b.min()), int(b.max())
        for old in [k for k in self._drawn if k < first]:
            del self._drawn[old]
        while self._next <= last:
            self._drawn[self._next] = self._draw(self._next)
            self._next += 1
        return torch.stack([self._drawn[int(bi)][int(si)] for bi, si in zip(b.tolist(), s.tolist(), strict=True)])
