"""Explainer base class (the extension point for new methods) and the helpers every post-hoc method uses."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn as nn

from traitlens.backbones.introspect import ViTLayout, vit_layout
from traitlens.backbones.protocols import as_vit
from traitlens.explain._compat import prompted_backbone
from traitlens.explain._explanation import Attribution
from traitlens.explain._gradients import _check_batch_size, _rows_per_pass
from traitlens.explain._registry import MethodInfo
from traitlens.explain._targets import TargetSpec

__all__ = ["Explainer", "forward_bytes", "fuse", "image_size", "last_block_row_bytes", "query_row", "row_chunks",
           "rows_in_chunks", "sequence_bytes"]

log = logging.getLogger(__name__)
_warned_pool: set[tuple[int, str]] = set()


class Explainer:
    """Base of every method: configuration in the constructor, data in `attribute` (like captum).

    A method is one subclass in one file, registered with one `@register_method(...)` decorator, which gives it
    its name and metadata (`MethodInfo`, posthoc.md §0). The constructor takes the model and the method's options
    as explicit keyword arguments (`explain` checks the names against its signature) and validates them;
    `attribute` returns the raw token-grid maps, and `explain` upsamples and normalises them with the registry
    defaults. Methods that backpropagate per image chunk subclass `GradientExplainer` instead. Modules in
    `traitlens/explain/` register on import; a method defined elsewhere registers when its module is imported.

    Example:
        >>> import torch
        >>> from traitlens.explain import Attribution, Explainer, explain, register_method
        >>> @register_method("token_norm", signed=False, class_specific=False, needs_grad=False,  # doctest: +SKIP
        ...                  default_upsample="nearest", default_norm="minmax", cost="1 forward, no grad",
        ...                  summary="L2 norm of the final patch tokens")
        ... class TokenNorm(Explainer):
        ...     def __init__(self, model, p: float = 2.0):
        ...         super().__init__(model)
        ...         self.p = p
        ...
        ...     def attribute(self, images, target, target_space="logit"):
        ...         layout = self.layout(images)
        ...         with torch.no_grad():
        ...             tokens = self.model.forward_features(images)
        ...             logits = self.model.forward_head(tokens)
        ...         targets = target.resolve(logits)  # [B,K]
        ...         maps = tokens[:, layout.num_prefix_tokens:].norm(p=self.p, dim=-1)
        ...         maps = maps.reshape(-1, 1, *layout.grid).expand(-1, targets.shape[1], -1, -1)
        ...         return Attribution(maps.contiguous(), targets, logits)
        >>> exp = explain(model, x, method="token_norm", p=1.0)  # doctest: +SKIP
    """

    info: ClassVar[MethodInfo]

    def __init__(self, model: nn.Module, **options: Any) -> None:
        self.model = model
        if options:
            raise TypeError(f"{type(self).__name__} got unknown options: {', '.join(sorted(options))}")

    def attribute(self, images: torch.Tensor, target: TargetSpec, target_space: str = "logit") -> Attribution:
        """Raw maps for `images` ([B,3,H,W], the model's input space) and the requested targets."""
        raise NotImplementedError

    def layout(self, images: torch.Tensor) -> ViTLayout:
        """Token layout for this input size; warns once when the model does not pool the CLS token.

        A "prompted_vit" model (Prompt-CAM) gives its backbone's layout; its logits come from its class tokens, so
        the backbone's pooling does not matter.
        """
        backbone = prompted_backbone(self.model)
        if backbone is not None:
            return vit_layout(backbone, image_size(images))
        layout = vit_layout(self.model, image_size(images))
        key = (id(self.model), self.info.name)
        if layout.global_pool != "token" and key not in _warned_pool:
            _warned_pool.add(key)
            warnings.warn(
                f"{self.info.name}: the model pools with '{layout.global_pool}', not the CLS token; the method "
                "still runs, but its CLS-row reading assumes token pooling (posthoc.md §0)",
                stacklevel=3,
            )
        return layout


def image_size(images: torch.Tensor) -> tuple[int, int]:
    """(H, W) of an image batch [..., H, W]."""
    return (images.shape[-2], images.shape[-1])


def query_row(attn: torch.Tensor, layout: ViTLayout, query: str = "cls") -> torch.Tensor:
    """Row q0 (CLS) of attention-like [..., N, N] restricted to patch columns → [..., P].

    `query='mean_patches'` averages the patch rows instead (our extension for models without CLS).
    """
    n_p = layout.num_prefix_tokens
    if query == "cls":
        if not layout.has_cls:
            raise ValueError("the model has no CLS token; pass query='mean_patches'")
        return attn[..., 0, n_p:]
    if query == "mean_patches":
        return attn[..., n_p:, n_p:].mean(-2)
    raise ValueError(f"unknown query '{query}'; choose 'cls' or 'mean_patches'")


def fuse(x: torch.Tensor, how: str, dim: int) -> torch.Tensor:
    """Fuse heads or layers: 'mean' | 'sum' | 'max' | 'min'."""
    if how == "mean":
        return x.mean(dim)
    if how == "sum":
        return x.sum(dim)
    if how == "max":
        return x.amax(dim)
    if how == "min":
        return x.amin(dim)
    raise ValueError(f"unknown fusion '{how}'; choose mean, sum, max or min")


def row_chunks(total: int, internal_batch_size: int | str | None, row_bytes: int) -> list[tuple[int, int]]:
    """Ranges [start, stop) covering `total` rows, at most `internal_batch_size` rows each.

    The memory knob of the methods that chunk a plain forward (rollout, raw_attention, TAM), with the semantics of
    the gradient methods' knob: a positive int fixes the rows per pass, None runs one pass, "auto" takes as many
    rows as fit in `AUTO_BUDGET_BYTES` at `row_bytes` each (at least one). Always at least one range, so an empty
    batch still runs one (empty) pass.

    Raises:
        ValueError: `internal_batch_size` is not a positive int, None or "auto".
    """
    _check_batch_size(internal_batch_size)
    size = _rows_per_pass(internal_batch_size, row_bytes) or max(total, 1)
    return [(start, min(start + size, total)) for start in range(0, total, size)] or [(0, 0)]


def forward_bytes(model: nn.Module, num_tokens: int, itemsize: int = 4) -> int:
    """Estimated peak working memory of one sequence in a no-grad block forward with fused attention.

    About 12·N·D values: the block input, the normed tokens and the MLP's hidden layer (4·D) before and after the
    activation; attention-sized [H,N,N] tensors of unfused blocks come on top (`attention_bytes`).
    """
    vit = as_vit(model)
    width = int(getattr(vit, "embed_dim", 0) or vit.blocks[-1].attn.qkv.in_features)
    return 12 * num_tokens * width * itemsize


def sequence_bytes(model: nn.Module, num_tokens: int, num_heads: int, itemsize: int = 4) -> int:
    """Estimated peak memory of one sequence in a no-grad forward: `forward_bytes`, plus the scores and
    probabilities (two [H,N,N] tensors) when a block of `model` runs its attention unfused."""
    unfused = any(not getattr(blk.attn, "fused_attn", False) for blk in as_vit(model).blocks)
    attention = num_heads * num_tokens**2 * itemsize
    return forward_bytes(model, num_tokens, itemsize) + (2 * attention if unfused else 0)


def rows_in_chunks(fn: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor,
                   internal_batch_size: int | str | None, row_bytes: int) -> torch.Tensor:
    """`fn` over chunks of `rows` (along dim 0, `row_chunks`), concatenated: a forward that never holds more
    than one chunk's working memory. `fn` must treat its rows independently (eval-mode models do)."""
    parts = [fn(rows[start:stop]) for start, stop in row_chunks(rows.shape[0], internal_batch_size, row_bytes)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def last_block_row_bytes(model: nn.Module, num_tokens: int, num_heads: int) -> int:
    """Estimated peak memory of one row of a last-block forward + backward (what 'auto' divides its budget by).

    The attention scores, probabilities and their gradient (3 tensors [H,N,N]) and the block's token activations
    with their gradients (2 × ~12·N·D values, `forward_bytes`).
    """
    return 3 * num_heads * num_tokens**2 * 4 + 2 * forward_bytes(model, num_tokens)
