"""TAM, the token ablation map (CDAM reference `lenbrocki/CDAM`; posthoc.md §10)."""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from traitlens.backbones.introspect import ViTLayout, vit_layout
from traitlens.backbones.protocols import as_vit
from traitlens.backbones.trunk import head_forward
from traitlens.explain._base import Explainer, image_size, row_chunks, sequence_bytes
from traitlens.explain._explanation import Attribution
from traitlens.explain._gradients import _check_batch_size
from traitlens.explain._registry import register_method
from traitlens.explain._targets import TargetSpec, target_scores

__all__ = ["ABLATIONS", "TokenAblationMap"]

ABLATIONS = ("drop", "zero", "mean_token")


@register_method(
    "tam", signed=True, class_specific=True, needs_grad=False, default_upsample="nearest", default_norm="none",
    cost="1 + P forwards per image, no grad, batched [chunk, N−1, D]; all K targets free",
    summary="Token ablation map: y(E) − y(E without patch token i), signed",
    batched_targets=True,
)
class TokenAblationMap(Explainer):
    """TAM_i = y(E) − y(E^(−i)) for every patch token i (posthoc.md §10). Signed: > 0 means token i supports c.

    E = the token embeddings after `_pos_embed` ([B,N,D], prefix tokens and positions added). E^(−i) removes
    token n_p+i, and `patch_drop → norm_pre → blocks → norm → forward_head` run on the shortened sequence.
    The ablated sequences of all images are batched as [chunk, N−1, D]; each forward gives every class's
    logit, so K targets cost nothing extra.

    With an average-pooling head ('avg'), dropping a token also changes the pooling denominator (P−1 instead
    of P patches), so TAM there mixes the token's content with the change of the mean; 'zero' and 'mean_token'
    keep the sequence length.

    Args:
        model: a timm `VisionTransformer` or subclass (else NotImplementedError naming the class).
        ablation: "drop" (reference) | "zero" (replace E[n_p+i] by zeros, position included) |
            "mean_token" (replace it by the mean of the image's patch embeddings); the last two are our extensions.
        internal_batch_size: sequences per forward (the clean ones and the ablated ones); "auto" (default) fits the
            estimated memory of a pass in 2 GiB (~40 sequences of a ViT-B at 518 px, ~300 at 224 px); None = all
            at once. The maps do not depend on it.

    Example:
        >>> exp = explain(model, x, method="tam", target="topk:3")  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, ablation: str = "drop",
                 internal_batch_size: int | str | None = "auto") -> None:
        super().__init__(model)
        if ablation not in ABLATIONS:
            raise ValueError(f"unknown ablation '{ablation}'; choose from {ABLATIONS}")
        _check_batch_size(internal_batch_size)
        if not isinstance(model, VisionTransformer):
            # Others (EVA with RoPE, Swin, ...) do not run blocks on a plain token sequence.
            cls = type(model)
            raise NotImplementedError(
                f"TAM needs a timm VisionTransformer (or subclass), not {cls.__module__}.{cls.__qualname__}"
            )
        self.ablation, self.internal_batch_size = ablation, internal_batch_size

    def _logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """patch_drop → norm_pre → blocks → norm → forward_head on token embeddings [M,N',D]."""
        vit = as_vit(self.model)
        x = vit.norm_pre(vit.patch_drop(tokens))
        return head_forward(self.model, x, 0)

    def _row_bytes(self, layout: ViTLayout) -> int:
        """Estimated peak memory of one sequence in a pass: the tokens, plus two attention-sized tensors (scores
        and probabilities) when a block runs its attention unfused."""
        return sequence_bytes(self.model, layout.num_tokens, layout.num_heads)

    def _ablated(self, E: torch.Tensor, b: torch.Tensor, i: torch.Tensor, n_p: int) -> torch.Tensor:
        """Sequences for (image b, patch i) pairs: [M,N−1,D] ('drop') or [M,N,D]."""
        N = E.shape[1]
        pos = n_p + i  # [M]
        if self.ablation == "drop":
            cols = torch.arange(N - 1, device=E.device).unsqueeze(0)  # [1,N−1]
            keep = cols + (cols >= pos.unsqueeze(1)).long()  # skip column n_p+i
            return E[b.unsqueeze(1), keep]
        seqs = E[b].clone()
        rows = torch.arange(b.numel(), device=E.device)
        if self.ablation == "zero":
            seqs[rows, pos] = 0
        else:
            seqs[rows, pos] = E[b, n_p:].mean(1)
        return seqs

    def attribute(self, images: torch.Tensor, target: TargetSpec, target_space: str = "logit") -> Attribution:
        # Not a CLS-row method: no pooling warning (an 'avg' head is documented above).
        layout = vit_layout(self.model, image_size(images))
        n_p, P = layout.num_prefix_tokens, layout.num_patches
        with torch.no_grad():
            vit = as_vit(self.model)
            E = vit._pos_embed(vit.patch_embed(images))  # [B,N,D]
            B = E.shape[0]
            row_bytes = self._row_bytes(layout)
            logits = torch.cat([self._logits(E[start:stop]) for start, stop in
                                row_chunks(B, self.internal_batch_size, row_bytes)])
            targets = target.resolve(logits)
            K = targets.shape[1]
            ablated = []
            for start, stop in row_chunks(B * P, self.internal_batch_size, row_bytes):
                idx = torch.arange(start, stop, device=E.device)
                ablated.append(self._logits(self._ablated(E, idx // P, idx % P, n_p)))
            ablated_logits = torch.cat(ablated)  # [B·P, C], rows in (image, patch) order
            y_full = target_scores(logits, targets, target_space)  # [B,K]
            y_abl = target_scores(ablated_logits, targets.repeat_interleave(P, 0), target_space).view(B, P, K)
            tam = (y_full.unsqueeze(1) - y_abl).transpose(1, 2)  # [B,K,P]
        return Attribution(tam.reshape(B, K, *layout.grid).contiguous(), targets, logits)
