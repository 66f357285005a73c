"""Attention rollout (Abnar & Zuidema 2020; posthoc.md §6), as run in the AGCAM comparisons."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn as nn

from traitlens.backbones.introspect import ViTLayout
from traitlens.backbones.probe import AttentionProbe
from traitlens.backbones.protocols import as_vit
from traitlens.explain._base import Explainer, forward_bytes, fuse, query_row, row_chunks
from traitlens.explain._explanation import Attribution
from traitlens.explain._gradients import _check_batch_size, attention_bytes
from traitlens.explain._registry import register_method
from traitlens.explain._targets import TargetSpec

__all__ = ["PRESETS", "RENORMS", "AttentionRollout", "rollout_step"]

RENORMS = ("rows", "jacobgil")

#: Named option sets. "default": the spec's (posthoc.md §6). "jacobgil": the defaults of jacobgil/vit-explain's
#: `vit_explain.py` (head fusion max, discard ratio 0.9) with its renormalisation; its `VITAttentionRollout` class
#: defaults to head fusion mean, so pass `head_fusion="mean"` with the preset for that.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {"head_fusion": "mean", "discard_ratio": 0.0, "renorm": "rows"},
    "jacobgil": {"head_fusion": "max", "discard_ratio": 0.9, "renorm": "jacobgil"},
}


def rollout_step(attn: torch.Tensor, head_fusion: str = "mean", discard_ratio: float = 0.0,
                 renorm: str = "rows") -> torch.Tensor:
    """Â_b [B,N,N] from one block's attention A_b [B,H,N,N] (posthoc.md §6).

    Ā = fuse_h(A); the ⌊r·N²⌋ smallest entries of Ā are zeroed per image, never (q0,q0); a = ½(Ā + I); then
    'rows': Â[i,j] = a[i,j] / Σ_k a[i,k] (each row sums to 1), or 'jacobgil': Â[i,j] = a[i,j] / Σ_k a[j,k], what
    the reference's `a / a.sum(dim=-1)` computes on its [1,N,N] matrix (the [1,N] row sums broadcast along the
    last axis, so column j is divided by the sum of row j). With mean fusion and no discard the rows of a
    already sum to 1 and both are a no-op; with a discard, or max/min fusion, they are not.
    """
    fused = fuse(attn, head_fusion, dim=1)  # [B,N,N]
    B, N, _ = fused.shape
    if discard_ratio > 0:
        flat = fused.reshape(B, -1).clone()
        n_drop = int(discard_ratio * N * N)
        keep_cls = flat[:, 0].clone()
        idx = flat.topk(n_drop, dim=-1, largest=False).indices
        flat.scatter_(1, idx, 0.0)
        flat[:, 0] = keep_cls
        fused = flat.view(B, N, N)
    eye = torch.eye(N, dtype=fused.dtype, device=fused.device)
    a = (fused + eye) / 2
    if renorm == "rows":
        return a / a.sum(-1, keepdim=True)
    if renorm == "jacobgil":
        return a / a.sum(-1).unsqueeze(-2)  # [B,1,N]: entry (i, j) over the sum of row j
    raise ValueError(f"unknown renorm '{renorm}'; choose from {RENORMS}")


@register_method(
    "rollout", signed=False, class_specific=False, needs_grad=False, default_upsample="bilinear",
    default_norm="minmax", cost="1 forward, no grad; running N×N product",
    summary="Attention rollout: product of ½(Ā+I) over blocks, CLS row",
    batched_targets=True, amp_tolerance=0.05,
)
class AttentionRollout(Explainer):
    """R = Â_L ⋯ Â_{s+1}, Â_b = `rollout_step`(A_b); map = R[q0, n_p:] (posthoc.md §6).

    Options left as None take the preset's value; options given explicitly win over the preset.

    Args:
        model: a timm ViT.
        head_fusion: "mean" (default) | "max" | "min".
        discard_ratio: zero the ⌊r·N²⌋ smallest entries of Ā_b per image (never (q0,q0)); default 0.
        start_layer: s, blocks before it are skipped (Chefer's evaluation scripts use 1).
        renorm: "rows" (default) or "jacobgil" (entry (i, j) divided by the sum of row j, the reference's
            broadcast; see `rollout_step`).
        query: "cls" (default) or "mean_patches".
        preset: None / "default" (mean, 0.0, "rows") or "jacobgil" (max, 0.9, "jacobgil": jacobgil/vit-explain's
            `vit_explain.py`, which scales the map by its max: pass `normalize="maxabs"` to `explain` for that).
        internal_batch_size: images per forward; "auto" (default) fits the estimated memory of a pass in 2 GiB
            (a few ViT-B images at 518 px, hundreds at 224 px); None = one pass. The maps do not depend on it.

    Example:
        >>> exp = explain(model, x, method="rollout", preset="jacobgil")  # doctest: +SKIP
    """

    _rollout: torch.Tensor | None

    def __init__(self, model: nn.Module, head_fusion: str | None = None, discard_ratio: float | None = None,
                 start_layer: int = 0, renorm: str | None = None, query: str = "cls",
                 preset: str | None = None, internal_batch_size: int | str | None = "auto") -> None:
        super().__init__(model)
        _check_batch_size(internal_batch_size)
        if (preset or "default") not in PRESETS:
            raise ValueError(f"unknown preset '{preset}'; choose from {tuple(PRESETS)}")
        defaults = PRESETS[preset or "default"]
        head_fusion = defaults["head_fusion"] if head_fusion is None else head_fusion
        discard_ratio = defaults["discard_ratio"] if discard_ratio is None else discard_ratio
        renorm = defaults["renorm"] if renorm is None else renorm
        if not 0.0 <= discard_ratio < 1.0:
            raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
        if renorm not in RENORMS:
            raise ValueError(f"unknown renorm '{renorm}'; choose from {RENORMS}")
        self.head_fusion, self.discard_ratio, self.preset = head_fusion, float(discard_ratio), preset or "default"
        self.start_layer, self.renorm, self.query = start_layer, renorm, query
        self.internal_batch_size = internal_batch_size

    def _step(self, attn: torch.Tensor) -> torch.Tensor:
        return rollout_step(attn, self.head_fusion, self.discard_ratio, self.renorm)

    def attribute(self, images: torch.Tensor, target: TargetSpec, target_space: str = "logit") -> Attribution:
        layout = self.layout(images)
        B = images.shape[0]
        passes = [self._pass(images[start:stop], layout)
                  for start, stop in row_chunks(B, self.internal_batch_size, self._row_bytes(layout))]
        logits = torch.cat([p[0] for p in passes])
        row = torch.cat([p[1] for p in passes])
        targets = target.resolve(logits)
        K = targets.shape[1]
        return Attribution(row.expand(B, K, *layout.grid).contiguous(), targets, logits)

    def _pass(self, images: torch.Tensor, layout: ViTLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [n,C], map [n,1,g_h,g_w]) of one chunk of images: one forward, folding as it goes."""
        blocks = list(range(self.start_layer, layout.num_blocks))
        with torch.no_grad(), AttentionProbe(self.model, blocks=blocks, capture=("attn",)) as probe:
            # Fold each block's attention into the running product as soon as it is computed.
            vit_blocks = as_vit(self.model).blocks
            handles = [vit_blocks[b].register_forward_hook(self._make_fold(probe, b)) for b in blocks]
            self._rollout = None
            try:
                logits = self.model(images)
            finally:
                for h in handles:
                    h.remove()
            rollout = self._rollout
            self._rollout = None
        # rollout is None only when no block is folded (start_layer ≥ L); query_row then raises a TypeError.
        row = query_row(cast(torch.Tensor, rollout), layout, self.query)
        return logits, row.reshape(images.shape[0], 1, *layout.grid)

    def _row_bytes(self, layout: ViTLayout) -> int:
        """Estimated peak memory of one image in a pass: the scores and probabilities of the block being run and
        its captured attention (3 attention-sized tensors), the fold's [N,N] temporaries and the tokens."""
        N = layout.num_tokens
        return 3 * attention_bytes(layout) + 8 * N * N * 4 + forward_bytes(self.model, N)

    def _make_fold(self, probe: AttentionProbe, b: int) -> Callable[..., None]:
        def hook(*_: object) -> None:
            step = self._step(probe.attn.pop(b))
            probe.attn.pop(b - len(as_vit(self.model).blocks), None)
            self._rollout = step if self._rollout is None else step @ self._rollout

        return hook
