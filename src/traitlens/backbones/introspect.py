"""Read a ViT's token layout from the model itself (posthoc.md §0): never hard-code 14×14 or 196."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch.nn as nn

from traitlens.backbones.protocols import as_vit

__all__ = ["ViTLayout", "class_names_of", "is_vit", "vit_layout"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViTLayout:
    """Token layout of a ViT for one input size.

    Attributes:
        num_prefix_tokens: n_p, the CLS + register + distillation tokens in front of the patches.
        grid: (g_h, g_w), the patch grid for this input size.
        patch_size: (p_h, p_w).
        global_pool: the model's pooling ('token', 'avg', 'map', ...).
        has_cls: whether token 0 is a class token (query row q0).
        num_blocks: L.
        num_heads: H of the last block.
    """

    num_prefix_tokens: int
    grid: tuple[int, int]
    patch_size: tuple[int, int]
    global_pool: str
    has_cls: bool
    num_blocks: int
    num_heads: int

    @property
    def num_patches(self) -> int:
        """P = g_h·g_w."""
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        """N = n_p + P."""
        return self.num_prefix_tokens + self.num_patches


def is_vit(model: nn.Module) -> bool:
    """True for timm-style ViTs: a patch embedding followed by a list of blocks with `.attn`."""
    return (
        hasattr(model, "patch_embed")
        and hasattr(model, "blocks")
        and len(as_vit(model).blocks) > 0
        and hasattr(as_vit(model).blocks[0], "attn")
    )


def _pair(v: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))


def vit_layout(model: nn.Module, image_size: tuple[int, int] | None = None) -> ViTLayout:
    """Token layout of `model` for inputs of `image_size` (H, W); the model's own grid when None.

    Raises:
        TypeError: when `model` is not a timm-style ViT.
    """
    if not is_vit(model):
        raise TypeError(
            f"{type(model).__name__} is not a ViT with `patch_embed` and `blocks`; "
            "attention-based methods need a timm VisionTransformer (or a model exposing the same parts)."
        )
    vit = as_vit(model)
    pe = vit.patch_embed
    patch = _pair(pe.patch_size)
    if image_size is not None and getattr(model, "dynamic_img_size", False):
        grid = _pair(pe.dynamic_feat_size((image_size[0], image_size[1])))
    elif image_size is not None and not getattr(pe, "strict_img_size", True):
        grid = (image_size[0] // patch[0], image_size[1] // patch[1])
    else:
        grid = _pair(pe.grid_size)
    n_p = int(getattr(model, "num_prefix_tokens", 1 if getattr(model, "cls_token", None) is not None else 0))
    return ViTLayout(
        num_prefix_tokens=n_p,
        grid=grid,
        patch_size=patch,
        global_pool=str(getattr(model, "global_pool", "token")),
        has_cls=getattr(model, "cls_token", None) is not None,
        num_blocks=len(vit.blocks),
        num_heads=int(vit.blocks[-1].attn.num_heads),
    )


def class_names_of(model: nn.Module) -> list[str] | None:
    """Class names the model carries (traitlens checkpoints or timm's `pretrained_cfg['label_names']`)."""
    names = getattr(model, "class_names", None)
    if names:
        return list(names)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("label_names") if isinstance(cfg, dict) else None
    return list(names) if names else None
