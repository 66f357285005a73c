"""Explainer base class and the shared helpers every post-hoc method uses."""

from __future__ import annotations

import logging
import warnings
from typing import Any, ClassVar

import torch
import torch.nn as nn

from traitlens.backbones.introspect import ViTLayout, vit_layout
from traitlens.explain._explanation import Attribution
from traitlens.explain._registry import MethodInfo
from traitlens.explain._targets import TargetSpec

__all__ = ["Explainer", "fuse", "query_row"]

log = logging.getLogger(__name__)
_warned_pool: set[tuple[int, str]] = set()


class Explainer:
    """Base of every method: configuration in the constructor, data in `attribute` (like captum).

    Subclasses are registered with `@register_method(...)` and implement `attribute`.
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
        """Token layout for this input size; warns once when the model does not pool the CLS token."""
        layout = vit_layout(self.model, tuple(images.shape[-2:]))
        key = (id(self.model), self.info.name)
        if layout.global_pool != "token" and key not in _warned_pool:
            _warned_pool.add(key)
            warnings.warn(
                f"{self.info.name}: the model pools with '{layout.global_pool}', not the CLS token; the method "
                "still runs, but its CLS-row reading assumes token pooling (posthoc.md §0)",
                stacklevel=3,
            )
        return layout


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
