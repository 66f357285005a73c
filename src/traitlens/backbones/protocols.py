"""Static types for the parts of a timm `VisionTransformer` that the explainers read (posthoc.md §0).

`nn.Module.__getattr__` types every submodule as `Tensor | Module`, so a type checker cannot follow
`model.blocks[-1].attn.num_heads`. These Protocols name what the methods actually read; `as_vit` views a module
through them. They describe, they do not check: `is_vit`/`vit_layout` (introspect.py) do the runtime checks, and
`as_vit` is a plain `typing.cast`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

import torch
import torch.nn as nn
from torch.utils.hooks import RemovableHandle

__all__ = [
    "HookableModule",
    "PatchEmbedLike",
    "TimmClassifier",
    "ViTAttention",
    "ViTBlock",
    "ViTLike",
    "ViTMlp",
    "as_vit",
]


class HookableModule(Protocol):
    """The `nn.Module` surface the methods use on a typed part: calling it and forward (pre-)hooks."""

    training: bool

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def register_forward_hook(self, hook: Callable[..., Any], *, prepend: bool = ..., with_kwargs: bool = ...,
                              always_call: bool = ...) -> RemovableHandle: ...

    def register_forward_pre_hook(self, hook: Callable[..., Any], *, prepend: bool = ...,
                                  with_kwargs: bool = ...) -> RemovableHandle: ...


class PatchEmbedLike(HookableModule, Protocol):
    """timm `PatchEmbed`: images [B,3,H,W] → patch tokens, and the grid it produces."""

    patch_size: int | tuple[int, int]
    grid_size: tuple[int, int]
    strict_img_size: bool

    def dynamic_feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]: ...


class ViTAttention(HookableModule, Protocol):
    """timm `Attention`: qkv projection, per-head scores (q·scale)kᵀ, softmax → `attn_drop`, `proj`."""

    num_heads: int
    head_dim: int
    scale: float
    fused_attn: bool
    qkv: nn.Linear
    q_norm: nn.Module
    k_norm: nn.Module
    attn_drop: nn.Module
    norm: nn.Module
    proj: nn.Linear
    proj_drop: nn.Module

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor: ...


class ViTMlp(HookableModule, Protocol):
    """timm `Mlp`: fc1 → act → drop1 → norm → fc2 → drop2."""

    fc1: nn.Linear
    act: nn.Module
    drop1: nn.Module
    norm: nn.Module
    fc2: nn.Linear
    drop2: nn.Module


class ViTBlock(HookableModule, Protocol):
    """timm `Block`: x + drop_path1(ls1(attn(norm1(x)))), then the same with norm2 and mlp."""

    attn: ViTAttention
    norm1: nn.Module
    ls1: nn.Module
    drop_path1: nn.Module
    norm2: nn.Module
    mlp: ViTMlp
    ls2: nn.Module
    drop_path2: nn.Module

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor: ...


class TimmClassifier(HookableModule, Protocol):
    """Any timm classifier (ViT or CNN): `forward_features` → features, `forward_head` → logits or pre-logits."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor: ...

    def get_classifier(self) -> nn.Module: ...


class ViTLike(TimmClassifier, Protocol):
    """timm `VisionTransformer`: patch_embed → _pos_embed → patch_drop → norm_pre → blocks → norm → forward_head.

    `forward_head` pools (`global_pool`, over `num_prefix_tokens` + patches), applies `fc_norm` and `head`.
    Optional parts (`cls_token`, `pos_embed`, `attn_pool`, `dynamic_img_size`) may be missing on non-timm models;
    read those with `getattr(model, name, default)`.
    """

    patch_embed: PatchEmbedLike
    blocks: Sequence[ViTBlock]
    norm_pre: nn.Module
    patch_drop: nn.Module
    norm: nn.Module
    fc_norm: nn.Module
    head: nn.Module
    num_prefix_tokens: int
    cls_token: torch.Tensor | None
    pos_embed: torch.Tensor | None
    global_pool: str
    attn_pool: nn.Module | None
    dynamic_img_size: bool

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor: ...


def as_vit(model: nn.Module) -> ViTLike:
    """`model` typed as a timm-style ViT; no runtime check (use `is_vit` / `vit_layout` for that)."""
    return cast(ViTLike, model)
