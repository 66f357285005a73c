"""LRP-based transformer attribution (Chefer, Gur & Wolf, CVPR 2021, arXiv 2012.09838; posthoc.md §9).

The relevance pass is a functional re-implementation of timm's `Block` that reuses the model's own modules and
weights (no model copy, no relprop-capable model class). Reference: `hila-chefer/Transformer-Explainability`,
`baselines/ViT/ViT_LRP.py` and `modules/layers_ours.py` (MIT); its rules are re-derived in closed form in
`_lrp_rules.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import cast

import torch
import torch.nn as nn
from timm.layers import LayerScale, Mlp
from timm.models.vision_transformer import Attention, Block, VisionTransformer

from traitlens.backbones.introspect import ViTLayout
from traitlens.backbones.protocols import ViTBlock, as_vit
from traitlens.backbones.trunk import trunk_forward
from traitlens.explain._base import query_row
from traitlens.explain._gradient_explainer import ChunkMaps, GradientChunk, GradientExplainer
from traitlens.explain._gradients import _resolve_chunk, attention_bytes
from traitlens.explain._lrp_rules import (
    Workspace,
    relprop_add,
    relprop_clone,
    relprop_linear,
    relprop_matmul,
    relprop_scale,
    safe_divide,
)
from traitlens.explain._registry import register_method

__all__ = [
    "LRPTransformerAttribution",
    "relprop_add",
    "relprop_clone",
    "relprop_linear",
    "relprop_matmul",
    "relprop_scale",
    "safe_divide",
]

MODES = ("full", "partial_lrp")
STABILIZERS = ("clamp", "reference")
_NORMS = (nn.LayerNorm, nn.Identity)


# ---------------------------------------------------------------------------------------------------------------
# Functional timm Block
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _BlockActs:
    """Activations of one `Block` forward that the relevance rules read."""

    x: torch.Tensor  # block input [B,N,D]
    t1: torch.Tensor  # norm1(x)
    q: torch.Tensor  # [B,H,N,d] after q_norm (unscaled)
    k: torch.Tensor
    v: torch.Tensor
    attn: torch.Tensor  # post-softmax (post-dropout) A [B,H,N,N]
    attn_v: torch.Tensor  # A·V [B,H,N,d]
    ctx: torch.Tensor  # attn.norm(A·V merged) [B,N,H·d], the input of proj
    proj_out: torch.Tensor  # proj(ctx), the input of ls1
    branch1: torch.Tensor  # ls1(proj_out)
    mid: torch.Tensor  # x + branch1
    t2: torch.Tensor  # norm2(mid)
    hidden: torch.Tensor  # mlp.norm(act(fc1(t2))), the input of fc2
    fc2_out: torch.Tensor  # the input of ls2
    branch2: torch.Tensor  # ls2(fc2_out)
    out: torch.Tensor  # mid + branch2


def _block_forward(blk: ViTBlock, x: torch.Tensor) -> _BlockActs:
    """timm `Block.forward` (standard `Attention`, `Mlp`), written out so every intermediate is kept."""
    attn = blk.attn
    B, N, _ = x.shape
    t1 = blk.norm1(x)
    qkv = attn.qkv(t1).reshape(B, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    a = attn.attn_drop(((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1))
    attn_v = a @ v
    ctx = attn.norm(attn_v.transpose(1, 2).reshape(B, N, -1))
    proj_out = attn.proj_drop(attn.proj(ctx))
    branch1 = blk.drop_path1(blk.ls1(proj_out))
    mid = x + branch1
    t2 = blk.norm2(mid)
    mlp = blk.mlp
    hidden = mlp.norm(mlp.drop1(mlp.act(mlp.fc1(t2))))
    fc2_out = mlp.drop2(mlp.fc2(hidden))
    branch2 = blk.drop_path2(blk.ls2(fc2_out))
    return _BlockActs(x, t1, q, k, v, a, attn_v, ctx, proj_out, branch1, mid, t2, hidden, fc2_out, branch2,
                      mid + branch2)


def _relprop_ls(ls: nn.Module, x: torch.Tensor, R: torch.Tensor, stabilizer: str) -> torch.Tensor:
    return relprop_scale(x, ls.gamma, R, stabilizer) if isinstance(ls, LayerScale) else R


def _relprop_block(
    blk: ViTBlock, acts: _BlockActs, R: torch.Tensor, stabilizer: str, stop_at_attention: bool = False,
    workspace: Workspace | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Relevance R at the block output [B,N,D] → (R at the block input, R_A [B,H,N,N] after A·V's relprop, halved).

    With a `workspace`, R_A lives in its buffer and is overwritten by the next block's call.

    LayerNorm, GELU (any activation), softmax and dropout pass relevance through unchanged.
    """
    attn = blk.attn
    B, N, _ = R.shape
    # x = mid + ls2(mlp(norm2(mid)))
    R_mid_res, R_branch2 = relprop_add(acts.mid, acts.branch2, R, stabilizer, total=acts.out)
    R_fc2 = _relprop_ls(blk.ls2, acts.fc2_out, R_branch2, stabilizer)
    R_hidden = relprop_linear(acts.hidden, blk.mlp.fc2.weight, R_fc2, stabilizer)
    R_t2 = relprop_linear(acts.t2, blk.mlp.fc1.weight, R_hidden, stabilizer)
    R_mid = relprop_clone(acts.mid, R_mid_res, R_t2, stabilizer=stabilizer)
    # mid = x + ls1(attn(norm1(x)))
    R_x_res, R_branch1 = relprop_add(acts.x, acts.branch1, R_mid, stabilizer, total=acts.mid)
    R_proj = _relprop_ls(blk.ls1, acts.proj_out, R_branch1, stabilizer)
    R_ctx = relprop_linear(acts.ctx, attn.proj.weight, R_proj, stabilizer)
    R_ctx = R_ctx.reshape(B, N, attn.num_heads, -1).transpose(1, 2)  # [B,H,N,d]
    R_A, R_v = relprop_matmul(acts.attn, acts.v, R_ctx, stabilizer, product=acts.attn_v, workspace=workspace,
                              tag="av")
    R_A, R_v = R_A.mul_(0.5), R_v / 2  # in place: R_A is [B,H,N,N]; halving is exact either way
    if stop_at_attention:
        return None, R_A
    # A = softmax(q kᵀ·scale): the scale cancels in the z-rule, as in the reference's unscaled einsum.
    R_q, R_kT = relprop_matmul(acts.q, acts.k.transpose(-2, -1), R_A, stabilizer, workspace=workspace, tag="qk")
    R_qkv = torch.stack([R_q / 2, R_kT.transpose(-2, -1) / 2, R_v])  # [3,B,H,N,d]
    R_qkv = R_qkv.permute(1, 3, 0, 2, 4).reshape(B, N, -1)  # inverse of timm's qkv reshape
    R_t1 = relprop_linear(acts.t1, attn.qkv.weight, R_qkv, stabilizer)
    return relprop_clone(acts.x, R_x_res, R_t1, stabilizer=stabilizer), R_A


def _relprop_pool(model: nn.Module, tokens: torch.Tensor, R: torch.Tensor, stabilizer: str) -> torch.Tensor:
    """z-rule through the head's token pooling: [B,D] relevance → [B,N,D]."""
    out = torch.zeros_like(tokens)
    if model.global_pool == "token":
        x0 = tokens[:, 0]
        out[:, 0] = x0 * safe_divide(R, x0, stabilizer)
        return out
    start = 0 if getattr(model, "pool_include_prefix", False) else model.num_prefix_tokens
    part = tokens[:, start:]
    z = part.mean(1)
    out[:, start:] = part / part.shape[1] * safe_divide(R, z, stabilizer).unsqueeze(1)
    return out


def check_supported(model: nn.Module) -> None:
    """Raise NotImplementedError naming the first part the relevance pass has no rule for."""

    def refuse(where: str, module: object) -> None:
        cls = type(module)
        raise NotImplementedError(
            f"LRP supports standard timm ViT blocks only: {where} is {cls.__module__}.{cls.__qualname__}"
        )

    # A subclass with its own head (e.g. DeiT's distillation head) would need its own head rules.
    if not isinstance(model, VisionTransformer) or type(model).forward_head is not VisionTransformer.forward_head:
        refuse("the model", model)
    if getattr(model, "attn_pool", None) is not None:
        refuse("the pooling (attn_pool)", model.attn_pool)
    if getattr(model, "global_pool", None) not in ("token", "avg"):
        raise NotImplementedError(f"LRP has pooling rules for 'token' and 'avg' heads, not '{model.global_pool}'")
    if not isinstance(model.head, nn.Linear):
        refuse("model.head", model.head)
    for name in ("norm", "fc_norm"):
        if not isinstance(getattr(model, name), _NORMS):
            refuse(f"model.{name}", getattr(model, name))
    for i, blk in enumerate(as_vit(model).blocks):
        if type(blk) is not Block:
            refuse(f"block {i}", blk)
        if type(blk.attn) is not Attention:
            refuse(f"block {i} attention", blk.attn)
        gate = getattr(blk.attn, "gate", None)
        if gate is not None:
            refuse(f"block {i} attention gate", gate)
        if type(blk.mlp) is not Mlp or not isinstance(blk.mlp.fc1, nn.Linear):
            refuse(f"block {i} mlp", blk.mlp)
        for name in ("norm1", "norm2"):
            if not isinstance(getattr(blk, name), _NORMS):
                refuse(f"block {i} {name}", getattr(blk, name))
        for name in ("q_norm", "k_norm", "norm"):
            if not isinstance(getattr(blk.attn, name), _NORMS):
                refuse(f"block {i} attn.{name}", getattr(blk.attn, name))
        if not isinstance(blk.mlp.norm, _NORMS):
            refuse(f"block {i} mlp.norm", blk.mlp.norm)
        for name in ("ls1", "ls2"):
            if not isinstance(getattr(blk, name), (LayerScale, nn.Identity)):
                refuse(f"block {i} {name}", getattr(blk, name))


# ---------------------------------------------------------------------------------------------------------------
# Explainer
# ---------------------------------------------------------------------------------------------------------------


@register_method(
    "lrp", signed=False, class_specific=True, needs_grad=True, default_upsample="bilinear", default_norm="minmax",
    cost="1 forward + 1 backward to block s's attention + 1 relevance pass over blocks L..s (no re-forward)",
    summary="Chefer's LRP transformer attribution: rollout of mean_h(∇A ⊙ R_A)^+ (or partial LRP, last block)",
)
class LRPTransformerAttribution(GradientExplainer):
    """Transformer attribution (posthoc.md §9): Ā_b = mean_h(G_b ⊙ R_A,b)^+, C = (I+Ā_L)⋯(I+Ā_{s+1}), map = C[q0, n_p:].

    R_A,b is the LRP relevance of block b's attention matrix after A·V's relprop (halved), from a relevance pass
    that starts at the **one-hot** of the target class; G_b = ∂y/∂A_b comes from a normal backward (y in
    `target_space`). The forward runs each block functionally with the model's own modules and keeps the
    intermediates, so the relevance pass reads them instead of replaying the blocks; every rule is per sample.
    Only the query row of C is formed, r ← r + r·Ā_b from the last block down (N² per block, not N³), and each
    block's G_b, R_A,b and intermediates are freed once folded in. The reference calls this
    `method="transformer_attribution"` (`"grad"` in `ViT_LRP.relprop`).

    `mode='partial_lrp'` (Voita et al. 2019, the reference's `last_layer`): map = mean_h(R_A,L)^+ at row q0, with
    per-head maps in `head_maps`; it needs no gradient.

    Args:
        model: a timm VisionTransformer made of standard `Block`s (else NotImplementedError naming the class).
        mode: "full" (default) | "partial_lrp".
        start_layer: s; blocks before it are left out of C (reference default 0; its evaluation scripts use 1).
        query: "cls" (default) | "mean_patches".
        multi_target: "expand" (default; replicate the images K times for the gradient pass) | "vjp" (one forward,
            K batched VJPs).
        stabilizer: "clamp" (spec: |denominator| ≥ 1e-9) | "reference" (denominator + 1e-9, the reference code).
        internal_batch_size: (image, target) rows per pass; "auto" (default) fits the estimated memory of a pass
            in 2 GiB (one row of a 518 px ViT-B needs ~3 GiB); None = one pass. The maps do not depend on it.

    Example:
        >>> exp = explain(model, x, method="lrp", start_layer=1)  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, mode: str = "full", start_layer: int = 0, query: str = "cls",
                 multi_target: str = "expand", stabilizer: str = "clamp",
                 internal_batch_size: int | str | None = "auto") -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode '{mode}'; choose from {MODES}")
        if stabilizer not in STABILIZERS:
            raise ValueError(f"unknown stabilizer '{stabilizer}'; choose from {STABILIZERS}")
        super().__init__(model, multi_target, internal_batch_size, query)
        check_supported(model)
        L = len(as_vit(model).blocks)
        if isinstance(start_layer, bool) or not isinstance(start_layer, int) or not 0 <= start_layer < L:
            raise ValueError(f"start_layer must be an int in 0..{L - 1}, got {start_layer!r}")
        self.mode, self.start_layer, self.stabilizer = mode, start_layer, stabilizer

    def _row_bytes(self, layout: ViTLayout, num_targets: int) -> int:
        """Per (image, target) row: G_b and A_b of the blocks in C, plus ~8 attention-sized temporaries."""
        blocks = 1 if self.mode == "partial_lrp" else layout.num_blocks - self.start_layer
        return (2 * blocks + 8) * attention_bytes(layout)

    # -- forward and gradient pass -------------------------------------------------------------------------------

    def _forward(self, x: torch.Tensor, first: int) -> tuple[torch.Tensor, dict[int, _BlockActs]]:
        """(logits, intermediates of blocks first..L−1): trunk without grad, then the functional blocks."""
        vit = as_vit(self.model)
        h = trunk_forward(self.model, x, first)
        if torch.is_grad_enabled():
            h = h.detach().requires_grad_()  # a leaf, so G exists even when the parameters are frozen
        acts: dict[int, _BlockActs] = {}
        for b in range(first, len(vit.blocks)):
            acts[b] = _block_forward(vit.blocks[b], h)
            h = acts[b].out
        return cast(VisionTransformer, self.model).forward_head(vit.norm(h)), acts

    def _chunk(self, chunk: GradientChunk, layout: ViTLayout) -> ChunkMaps:
        L, K = layout.num_blocks, chunk.num_targets
        if self.mode == "partial_lrp":
            with torch.no_grad():
                logits, acts = self._forward(chunk.x, L - 1)
            targets = _resolve_chunk(chunk.target, logits, chunk.start, chunk.stop)
            rep = K
            grads: dict[int, torch.Tensor] = {}
        else:
            with torch.enable_grad():
                out, acts = self._forward(chunk.replicated(), self.start_layer)
                logits, targets, y = chunk.scores(out)
                blocks = list(acts)
                gs = chunk.grads(y, [acts[b].attn for b in blocks])  # [n,K,H,N,N] each
            del out, y
            grads = {b: g.reshape(-1, *g.shape[2:]).detach() for b, g in zip(blocks, gs, strict=True)}
            del gs
            rep = 1 if chunk.expand else K
        acts = {b: _detached(a) for b, a in acts.items()}
        classes = targets.reshape(-1)
        first = min(acts)
        # The fold below is done with each R_A before the next block's: one buffer serves them all.
        steps = self._relevance_steps(lambda b: _repeat(acts.pop(b), rep), classes, first, reuse=True)
        n = chunk.n
        if self.mode == "partial_lrp":
            (_, R_A), = steps
            heads = query_row(R_A.clamp(min=0), layout, self.query).reshape(n, K, -1, layout.num_patches)
            return ChunkMaps(heads.mean(2), targets, logits.detach(), heads)
        r = _query_vector(layout, self.query, classes.numel(), grads[first])
        for b, R_A in steps:
            a_bar = grads.pop(b).mul_(R_A).clamp_(min=0).mean(1)  # [M,N,N]; G_b is not needed after
            del R_A
            r = r + (r.unsqueeze(-2) @ a_bar).squeeze(-2)
        row = r[:, layout.num_prefix_tokens:]
        return ChunkMaps(row.reshape(n, K, -1), targets, logits.detach())

    # -- relevance pass ------------------------------------------------------------------------------------------

    def _relevance_steps(self, acts_of: Callable[[int], _BlockActs], classes: torch.Tensor, stop_at: int,
                         to_input: bool = False, out: list[torch.Tensor] | None = None, reuse: bool = False
                         ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield (b, R_A,b [M,H,N,N]) for b = L−1 down to `stop_at`, from the one-hot of `classes` [M].

        `acts_of(b)` gives block b's intermediates, asked once per block in that order. With `to_input` the pass
        continues through block stop_at's attention and appends the relevance at its input [M,N,D] to `out`.
        `reuse=True` writes every R_A into one buffer: a consumer must be done with R_A,b before asking for the next.
        """
        workspace = Workspace(keep=reuse)
        model, st = as_vit(self.model), self.stabilizer
        head = cast(nn.Linear, model.head)  # check_supported: a Linear head
        L = len(model.blocks)
        with torch.no_grad():
            acts = acts_of(L - 1)
            tokens = model.norm(acts.out)
            feats = model.forward_head(tokens, pre_logits=True)  # pool → fc_norm → head_drop
            R = torch.zeros(classes.numel(), head.out_features, dtype=feats.dtype, device=feats.device)
            R.scatter_(1, classes.view(-1, 1), 1.0)  # one-hot, not the logit value
            R = relprop_linear(feats, head.weight, R, st)
            R_out: torch.Tensor | None = _relprop_pool(self.model, tokens, R, st)  # fc_norm, head_drop, norm: identity
            del tokens, feats, R
            for b in range(L - 1, stop_at - 1, -1):
                if b != L - 1:
                    acts = acts_of(b)
                # R_out is None only after the last visited block (stop_at_attention).
                R_out, R_A = _relprop_block(model.blocks[b], acts, cast(torch.Tensor, R_out), st,
                                            stop_at_attention=b == stop_at and not to_input, workspace=workspace)
                del acts
                yield b, R_A
        if out is not None and R_out is not None:
            out.append(R_out)

    def relevance(
        self, inputs: dict[int, torch.Tensor], classes: torch.Tensor, stop_at: int = 0, to_input: bool = False
    ) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
        """Relevance pass from the one-hot of `classes` [M] down to block `stop_at`, replaying the blocks.

        Args:
            inputs: block inputs [M,N,D] for blocks stop_at..L−1.
            classes: class ids [M].
            stop_at: lowest block to visit.
            to_input: continue through block stop_at's attention to its input (the map needs only R_A).

        Returns:
            (R_A,b [M,H,N,N] per visited block, the relevance at block stop_at's input [M,N,D] when `to_input`,
            else None).
        """
        blocks = as_vit(self.model).blocks

        def acts_of(b: int) -> _BlockActs:
            with torch.no_grad():
                return _block_forward(blocks[b], inputs[b])

        out: list[torch.Tensor] = []
        relevances = dict(self._relevance_steps(acts_of, classes, stop_at, to_input, out))
        return relevances, out[0] if out else None


def _detached(acts: _BlockActs) -> _BlockActs:
    """The intermediates as plain values (the relevance rules never differentiate them)."""
    return _BlockActs(*(t.detach() for t in astuple_shallow(acts)))


def _repeat(acts: _BlockActs, rep: int) -> _BlockActs:
    """Each image's intermediates repeated `rep` times (image-major), for K targets per image in 'vjp'."""
    if rep == 1:
        return acts
    return _BlockActs(*(t.repeat_interleave(rep, 0) for t in astuple_shallow(acts)))


def astuple_shallow(acts: _BlockActs) -> list[torch.Tensor]:
    """The fields of `acts` in order, without `dataclasses.astuple`'s deep copy."""
    return [getattr(acts, f.name) for f in fields(acts)]


def _query_vector(layout: ViTLayout, query: str, rows: int, like: torch.Tensor) -> torch.Tensor:
    """Row vectors e [rows,N]: one-hot at q0, or the mean of the patch rows for 'mean_patches'."""
    e = torch.zeros(rows, layout.num_tokens, dtype=like.dtype, device=like.device)
    if query == "cls":
        e[:, 0] = 1.0
    else:
        e[:, layout.num_prefix_tokens:] = 1.0 / layout.num_patches
    return e
