"""`GradientExplainer`: the image × target chunking loop of the gradient methods (posthoc.md §0 "Batching").

A subclass implements one chunk (forward, scores, one `autograd.grad`, the map); the base splits the batch so
that one pass holds at most `internal_batch_size` rows, resolves the targets per chunk from that chunk's own
logits, and assembles the `Attribution`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from traitlens.backbones.introspect import ViTLayout
from traitlens.explain._base import Explainer
from traitlens.explain._explanation import Attribution
from traitlens.explain._gradients import (
    _check_options,
    _check_state,
    _chunk_scores,
    _chunks,
    _per_target,
    _rows_per_pass,
    _target_grads,
    attention_bytes,
)
from traitlens.explain._targets import TargetSpec

__all__ = ["ChunkMaps", "GradientChunk", "GradientExplainer"]


@dataclass(frozen=True)
class GradientChunk:
    """One pass: images start..stop−1 of the batch, and what scoring and differentiating them needs.

    Attributes:
        x: the chunk's rows [n, ...], one per image (images, trunk tokens or a feature map).
        forward: maps rows (replicated or not) to logits.
        target: the batch's target request.
        start: first image of the chunk.
        stop: one past its last image.
        num_targets: K.
        expand: True for 'expand' (rows replicated per target, image-major), False for 'vjp'.
        space: target space ('logit' | 'prob' | 'log_prob').
    """

    x: torch.Tensor
    forward: Callable[[torch.Tensor], torch.Tensor]
    target: TargetSpec
    start: int
    stop: int
    num_targets: int
    expand: bool
    space: str

    @property
    def n(self) -> int:
        """Images in the chunk."""
        return int(self.x.shape[0])

    def replicated(self) -> torch.Tensor:
        """The rows the forward runs on: K copies per image for 'expand' (image-major), else `x` itself."""
        return self.x.repeat_interleave(self.num_targets, dim=0) if self.expand else self.x

    def scores(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per-image logits [n,C], targets [n,K], scores y: [n·K,1] for 'expand', [n,K] for 'vjp')."""
        return _chunk_scores(logits, self.target, self.start, self.stop, self.num_targets, self.expand, self.space)

    def grads(self, y: torch.Tensor, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """∂y/∂inputs per (image, target), each [n,K,...], in one `autograd.grad` call."""
        return _target_grads(y, inputs, self.n, self.num_targets, self.expand)

    def per_target(self, t: torch.Tensor) -> torch.Tensor:
        """A captured forward tensor as [n, K or 1, ...], broadcastable against `grads`."""
        return _per_target(t, self.n, self.num_targets, self.expand)


@dataclass
class ChunkMaps:
    """What one chunk returns, all detached.

    Attributes:
        maps: [n,K,...] maps (flat patches [n,K,P] or a grid).
        targets: [n,K] class ids.
        logits: [n,C] per-image logits.
        heads: [n,K,H,...] per-head maps, or None.
    """

    maps: torch.Tensor
    targets: torch.Tensor
    logits: torch.Tensor
    heads: torch.Tensor | None = None


class GradientExplainer(Explainer):
    """Base of the gradient methods that backpropagate per chunk of images (AGCAM, GAE, Grad-CAM).

    `attribute` checks the model state (posthoc.md §0), reads the layout, splits the input with `_split`, runs
    `_chunk` on every chunk and reshapes the maps to the patch grid. A subclass sets its options in `__init__`
    (calling this one with its own defaults) and implements `_chunk`; `_split`, `_needs_cls` and `_extras` have
    defaults.

    Args:
        model: the model.
        multi_target: "vjp" (one forward, K batched VJPs) | "expand" (replicate the rows per target).
        internal_batch_size: rows per forward (images for 'vjp', images×targets for 'expand'); None = one pass;
            'auto' = as many rows as `_row_bytes` says fit in `AUTO_BUDGET_BYTES` (2 GiB), at least one.
        query: "cls" | "mean_patches"; None for methods without a query row (then no `query` attribute is set).

    Example:
        >>> class GradNorm(GradientExplainer):  # doctest: +SKIP
        ...     def _chunk(self, chunk, layout):
        ...         with torch.enable_grad(), AttentionProbe(self.model, blocks=[-1], capture=("norm1",)) as probe:
        ...             logits = chunk.forward(chunk.replicated())
        ...         with torch.enable_grad():
        ...             image_logits, targets, y = chunk.scores(logits)
        ...             (g,) = chunk.grads(y, [probe.norm1[-1]])  # [n,K,N,D]
        ...         maps = g[..., layout.num_prefix_tokens:, :].norm(dim=-1)
        ...         return ChunkMaps(maps.detach(), targets, image_logits.detach())
    """

    multi_target: str
    internal_batch_size: int | str | None
    query: str

    def __init__(self, model: nn.Module, multi_target: str = "vjp", internal_batch_size: int | str | None = 16,
                 query: str | None = "cls") -> None:
        super().__init__(model)
        _check_options(multi_target, internal_batch_size, query)
        self.multi_target, self.internal_batch_size = multi_target, internal_batch_size
        if query is not None:
            self.query = query

    def attribute(self, images: torch.Tensor, target: TargetSpec, target_space: str = "logit") -> Attribution:
        _check_state(self.model)
        layout = self.layout(images)
        if self._needs_cls() and not layout.has_cls:
            raise ValueError("the model has no CLS token; pass query='mean_patches'")
        rows, forward = self._split(images)
        out = self._run_chunks(rows, forward, target, target_space, lambda chunk: self._chunk(chunk, layout),
                               row_bytes=self._row_bytes(layout, target.num_targets))
        B, K, grid = images.shape[0], target.num_targets, layout.grid
        heads = None if out.heads is None else out.heads.reshape(B, K, -1, *grid)
        return Attribution(out.maps.reshape(B, K, *grid), out.targets, out.logits, heads, extras=self._extras())

    def _chunk(self, chunk: GradientChunk, layout: ViTLayout) -> ChunkMaps:
        """Maps of one chunk; maps and heads flat over the patches ([n,K,P], [n,K,H,P])."""
        raise NotImplementedError

    def _split(self, images: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """(rows to chunk, their forward to logits); default the images and the whole model."""
        return images, self.model

    def _needs_cls(self) -> bool:
        """Whether the model must have a CLS token (the query row q0)."""
        return self.query == "cls"

    def _extras(self) -> dict[str, Any]:
        """Method-specific `Attribution.extras`."""
        return {}

    def _row_bytes(self, layout: ViTLayout, num_targets: int) -> int:
        """Estimated peak working memory of one row of a pass (what 'auto' divides the budget by).

        Default: the attention tensors and their gradients of every block, plus the autograd graph's own copies,
        ~4·L attention-sized tensors; with 'vjp' an image row carries the gradients of all K targets.
        """
        per_target = 1 if self.multi_target == "expand" else num_targets
        return (2 + 2 * per_target) * layout.num_blocks * attention_bytes(layout)

    def _run_chunks(self, rows: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor], target: TargetSpec,
                    space: str, compute: Callable[[GradientChunk], ChunkMaps], row_bytes: int = 0) -> ChunkMaps:
        """`compute` on every chunk of `rows` ([B, ...], one row per image), concatenated over the batch.

        `row_bytes` is the estimated memory of one row, for `internal_batch_size='auto'`.
        """
        B, K = rows.shape[0], target.num_targets
        expand = self.multi_target == "expand" and K > 1
        size = _rows_per_pass(self.internal_batch_size, row_bytes)
        parts = [compute(GradientChunk(rows[start:stop], forward, target, start, stop, K, expand, space))
                 for start, stop in _chunks(B, K, expand, size)]
        maps = torch.cat([p.maps for p in parts])
        heads = None if parts[0].heads is None else torch.cat([p.heads for p in parts if p.heads is not None])
        return ChunkMaps(maps, torch.cat([p.targets for p in parts]), torch.cat([p.logits for p in parts]).detach(),
                         heads)
