"""Trunk split (posthoc.md §0): run the first k blocks without grad, the rest with grad.

Methods that need gradients only through the last block(s) save memory and time this way.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from traitlens.backbones.introspect import vit_layout

__all__ = ["head_forward", "split_forward", "trunk_forward"]


def _check_timm_vit(model: nn.Module) -> None:
    vit_layout(model)
    for name in ("_pos_embed", "forward_head", "norm"):
        if not hasattr(model, name):
            raise TypeError(f"{type(model).__name__} lacks `{name}`; the trunk split needs a timm VisionTransformer")


def trunk_forward(model: nn.Module, images: torch.Tensor, k: int) -> torch.Tensor:
    """Tokens x^(k) entering block k: patch_embed → _pos_embed → patch_drop → norm_pre → blocks[:k], no grad."""
    _check_timm_vit(model)
    k = k % (len(model.blocks) + 1) if k < 0 else k
    with torch.no_grad():
        x = model.patch_embed(images)
        x = model._pos_embed(x)
        x = model.patch_drop(x)
        x = model.norm_pre(x)
        for blk in model.blocks[:k]:
            x = blk(x)
    return x


def head_forward(model: nn.Module, tokens: torch.Tensor, k: int, pre_logits: bool = False) -> torch.Tensor:
    """Logits from tokens entering block k: blocks[k:] → norm → forward_head, with grad as enabled."""
    k = k % (len(model.blocks) + 1) if k < 0 else k
    x = tokens
    for blk in model.blocks[k:]:
        x = blk(x)
    x = model.norm(x)
    return model.forward_head(x, pre_logits=pre_logits)


def split_forward(model: nn.Module, images: torch.Tensor, k: int) -> torch.Tensor:
    """`model(images)` with blocks[:k] run under no_grad; equals the full forward in value."""
    return head_forward(model, trunk_forward(model, images, k), k)
