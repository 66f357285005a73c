"""The ViT Protocols name parts a real timm VisionTransformer has."""

from __future__ import annotations

import typing

import pytest
import timm

from traitlens.backbones.protocols import (
    PatchEmbedLike,
    TimmClassifier,
    ViTAttention,
    ViTBlock,
    ViTLike,
    ViTMlp,
    as_vit,
)

# Optional parts (read with getattr by the methods) or attributes only set on some models.
OPTIONAL = {"cls_token", "pos_embed", "attn_pool", "dynamic_img_size"}


def _members(proto: type) -> set[str]:
    names = set()
    for cls in proto.__mro__:
        if cls is typing.Protocol or cls is object or cls is typing.Generic:
            continue
        names |= set(getattr(cls, "__annotations__", {}))
        names |= {n for n, v in vars(cls).items() if callable(v) and not n.startswith("__")}
    return names


@pytest.mark.parametrize("reg_tokens", [0, 2])
def test_timm_vit_has_every_protocol_member(reg_tokens):
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1, num_classes=3,
                              reg_tokens=reg_tokens)
    vit = as_vit(model)
    assert vit is model
    blk = vit.blocks[0]
    for obj, proto in ((model, ViTLike), (model, TimmClassifier), (model.patch_embed, PatchEmbedLike),
                       (blk, ViTBlock), (blk.attn, ViTAttention), (blk.mlp, ViTMlp)):
        missing = {m for m in _members(proto) - OPTIONAL if not hasattr(obj, m)}
        assert not missing, f"{type(obj).__name__} lacks {sorted(missing)} of {proto.__name__}"
    assert vit.num_prefix_tokens == 1 + reg_tokens
