"""Trunk split (posthoc.md §0): run the first k blocks without grad, the rest with grad.

Methods that need gradients only through the last block(s) save memory and time this way.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.models.vision_transformer import Attention, Block

from traitlens.backbones.introspect import vit_layout
from traitlens.backbones.protocols import ViTBlock, as_vit

__all__ = ["head_forward", "readout_rows", "split_forward", "trunk_forward"]


def _check_timm_vit(model: nn.Module) -> None:
    vit_layout(model)
    for name in ("_pos_embed", "forward_head", "norm"):
        if not hasattr(model, name):
            raise TypeError(f"{type(model).__name__} lacks `{name}`; the trunk split needs a timm VisionTransformer")


def trunk_forward(model: nn.Module, images: torch.Tensor, k: int) -> torch.Tensor:
    """Tokens x^(k) entering block k: patch_embed → _pos_embed → patch_drop → norm_pre → blocks[:k], no grad."""
    _check_timm_vit(model)
    vit = as_vit(model)
    k = k % (len(vit.blocks) + 1) if k < 0 else k
    with torch.no_grad():
        x = vit.patch_embed(images)
        x = vit._pos_embed(x)
        x = vit.patch_drop(x)
        x = vit.norm_pre(x)
        for blk in vit.blocks[:k]:
            x = blk(x)
    return x


def readout_rows(model: nn.Module) -> int | None:
    """How many leading tokens the head reads (CLS = 1; CLS + distillation = 2), or None when it pools them all.

    None also when the last block is not a plain timm `Block` with timm `Attention`, whose maths
    `_last_block_rows` reproduces.
    """
    block = as_vit(model).blocks[-1]
    if type(block).forward is not Block.forward or type(block.attn).forward is not Attention.forward:
        return None
    if getattr(model, "global_pool", None) != "token" or getattr(model, "attn_pool", None) is not None:
        return None
    return 2 if hasattr(model, "head_dist") else 1


def _last_block_rows(block: ViTBlock, x: torch.Tensor, rows: int) -> torch.Tensor:
    """A timm `Block` evaluated for its first `rows` output tokens only: queries, projection and MLP run on those
    rows, keys and values on every token. Equals `block(x)[:, :rows]`; ~6× cheaper than the full block when the
    head reads the CLS token alone, and the gradient w.r.t. the inputs (and `norm1`'s output) is unchanged."""
    attn = block.attn
    h = block.norm1(x)
    M, N = h.shape[:2]
    heads, hd = attn.num_heads, attn.head_dim
    width = heads * hd
    weight, bias = attn.qkv.weight, attn.qkv.bias
    q = nn.functional.linear(h[:, :rows], weight[:width], None if bias is None else bias[:width])
    kv = nn.functional.linear(h, weight[width:], None if bias is None else bias[width:])
    q = q.reshape(M, rows, heads, hd).transpose(1, 2)
    k, v = kv.reshape(M, N, 2, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    a = attn.attn_drop(((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1))
    out = (a @ v).transpose(1, 2).reshape(M, rows, width)
    out = getattr(attn, "norm", nn.Identity())(out)
    gate = getattr(attn, "gate", None)
    if gate is not None:
        out = out * gate(h[:, :rows]).sigmoid()
    y = x[:, :rows] + block.drop_path1(block.ls1(attn.proj_drop(attn.proj(out))))
    return y + block.drop_path2(block.ls2(block.mlp(block.norm2(y))))


def head_forward(model: nn.Module, tokens: torch.Tensor, k: int, pre_logits: bool = False,
                 readout_only: bool = False) -> torch.Tensor:
    """Logits from tokens entering block k: blocks[k:] → norm → forward_head, with grad as enabled.

    `readout_only=True` computes the last block only for the tokens the head reads (`readout_rows`), when the
    model allows it; hooks on that block's attention then see [M, heads, rows, N], so only callers that need no
    attention capture (CDAM) ask for it.
    """
    vit = as_vit(model)
    blocks = vit.blocks
    k = k % (len(blocks) + 1) if k < 0 else k
    rows = readout_rows(model) if readout_only and k < len(blocks) else None
    x = tokens
    for blk in blocks[k:len(blocks) - (rows is not None)]:
        x = blk(x)
    if rows is not None:
        x = _last_block_rows(blocks[-1], x, rows)
    x = vit.norm(x)
    return vit.forward_head(x, pre_logits=pre_logits)


def split_forward(model: nn.Module, images: torch.Tensor, k: int) -> torch.Tensor:
    """`model(images)` with blocks[:k] run under no_grad; equals the full forward in value."""
    return head_forward(model, trunk_forward(model, images, k), k)
