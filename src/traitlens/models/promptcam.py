"""Prompt-CAM (Chowdhury et al., CVPR 2025, arXiv 2501.09333; models.md §1) on any timm ViT.

Class-specific prompts in front of a **frozen** ViT and one shared scorer. Prompt c's last-block attention to
the patches is the native map of class c, per head. Also here: head ranking by blurring (§1.5) and the
trait-removal analysis (§1.6).

Example:
    >>> net = PromptCAM("vit_small_patch16_224.dino", num_classes=200)  # doctest: +SKIP
    >>> out = net.eval()(x)  # out.logits [B,200], out.maps [B,200,6,14,14]  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Attention as TimmAttention
from timm.models.vision_transformer import Block as TimmBlock

from traitlens.backbones.introspect import is_vit, vit_layout
from traitlens.backbones.loading import register_builder
from traitlens.backbones.probe import AttentionProbe, UnsupportedAttentionError
from traitlens.models._common import InterpretableModel, ModelOutput, build_backbone, set_drop_path

__all__ = [
    "HeadRanking",
    "PromptCAM",
    "TraitRemoval",
    "backbone_hash",
    "gaussian_blur",
    "load_prompts",
    "noisy_linear_impute",
    "rank_heads",
    "save_prompts",
    "top_fraction_region",
    "trait_head_matrix",
    "trait_removal",
]

log = logging.getLogger(__name__)

VARIANTS = ("deep", "shallow", "interpolated")
ATTN_KEYS = ("all", "patches")
BLURS = ("all", "patches")
CRITERIA = ("prob", "logit")
STOPS = ("keep_k", "until_misclassified")
SUBSTRATES = ("blur", "mean", "road")


class PromptCAM(InterpretableModel):
    """Prompt-CAM: per-class prompts on a frozen timm ViT with a shared scorer (models.md §1.1–1.4).

    Forward (Deep, §1.2): block i gets fresh prompts P_i, prompts are stripped after each block, and the last
    block's class prompts are scored, `logits = head(norm(z)[:, :C])`. Native maps: `map[b,c,r] =
    A_L[b,r,c,C+n_p:]` on the patch grid, with fused attention off in the last block only.

    Args:
        backbone: timm ViT name, preset, traitlens model directory or module (see `build_backbone`). Frozen.
        num_classes: C, one class prompt each.
        variant: "deep" (default; the released code), "shallow" (paper) or "interpolated" (needs `class_from_block`).
        class_from_block: i, the block where class prompts are inserted and carried to the end; L−1 is Deep and
            0 is Shallow. Blocks before i get class-agnostic prompts that are discarded after each block.
        attn_keys: "all" (reference: raw softmax over all C+N keys, patch part sums to < 1) or "patches"
            (paper Eq. 5: the map is renormalised over the M patch keys). The forward pass is the same.
        n_agnostic_prompts: class-agnostic prompts per block (default C, as in the paper; our cost knob).
        prompt_dropout: dropout on the prompts each forward (reference preset: 0.1 DINO, 0.0 DINOv2).
        drop_path: stochastic depth of the frozen ViT while the prompts train (reference preset: 0.1 DINO, 0.0
            DINOv2); None keeps the backbone's own. It also skips the block holding Deep's class prompts.
        train_head: learn the shared scorer (default True; the first code release left it at its random init).
        pretrained: fetch published weights for a timm name.
        backbone_args: extra `timm.create_model` arguments, e.g. `{"dynamic_img_size": True}`.
        class_names: names of the C classes.

    Attributes:
        agnostic_prompts: [i, n_a, D] prompts of blocks 0..i−1 (Deep: [L−1, C, D]).
        class_prompts: [C, D]. With `agnostic_prompts` these are the spec's `prompts` [L,C,D] for Deep.
        head: the shared `Linear(D, 1)` scorer.
    """

    kind = "promptcam"
    reference_selection = "best_val"  # the reference keeps the best top-1 measured on its test split

    def __init__(
        self,
        backbone: str | Path | nn.Module | dict[str, Any],
        num_classes: int,
        variant: str = "deep",
        class_from_block: int | None = None,
        attn_keys: str = "all",
        n_agnostic_prompts: int | None = None,
        prompt_dropout: float = 0.0,
        drop_path: float | None = None,
        train_head: bool = True,
        pretrained: bool = True,
        backbone_args: dict[str, Any] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant '{variant}'; choose from {VARIANTS}")
        if attn_keys not in ATTN_KEYS:
            raise ValueError(f"unknown attn_keys '{attn_keys}'; choose from {ATTN_KEYS}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        module, spec, _ = build_backbone(backbone, pretrained, backbone_args)
        if not is_vit(module) or not hasattr(module, "_pos_embed"):
            raise TypeError(f"Prompt-CAM needs a timm VisionTransformer backbone, not {type(module).__name__}")
        self.backbone = module
        if drop_path is not None:
            set_drop_path(module, drop_path)
        for p in self.backbone.parameters():
            p.requires_grad_(False)  # §1.3: the whole ViT is frozen
        L = len(module.blocks)
        if class_from_block is None:
            if variant == "interpolated":
                raise ValueError("variant='interpolated' needs class_from_block=i (0 < i < L−1)")
            class_from_block = L - 1 if variant == "deep" else 0
        if not 0 <= class_from_block < L:
            raise ValueError(f"class_from_block must be in 0..{L - 1}, got {class_from_block}")
        self.num_classes = int(num_classes)
        self.class_from_block = int(class_from_block)
        self.variant = {L - 1: "deep", 0: "shallow"}.get(self.class_from_block, "interpolated")
        self.attn_keys = attn_keys
        D = int(module.embed_dim)
        n_a = int(n_agnostic_prompts or num_classes)
        self.n_agnostic = n_a
        self.agnostic_prompts = nn.Parameter(torch.empty(self.class_from_block, n_a, D))
        self.class_prompts = nn.Parameter(torch.empty(self.num_classes, D))
        # VPT's init: uniform(−v, v), v = √(6 / (3·p² + D)) (§1.3).
        p_h, p_w = vit_layout(module).patch_size
        v = math.sqrt(6.0 / (3 * p_h * p_w + D))
        nn.init.uniform_(self.agnostic_prompts, -v, v)
        nn.init.uniform_(self.class_prompts, -v, v)
        self.prompt_dropout = nn.Dropout(prompt_dropout)
        self.head = nn.Linear(D, 1)
        self.head.requires_grad_(train_head)
        ref = next(module.parameters())
        self.to(device=ref.device, dtype=ref.dtype)  # prompts and scorer follow the backbone's dtype and device
        self._init_common(spec, {"variant": self.variant, "class_from_block": self.class_from_block,
                                 "attn_keys": attn_keys, "n_agnostic_prompts": n_a,
                                 "prompt_dropout": prompt_dropout, "drop_path": drop_path,
                                 "train_head": train_head}, class_names)

    # -- forward -------------------------------------------------------------------------------------------------
    def _final_norm(self) -> nn.Module:
        """The pre-trained final norm (for 'avg'-pooled ViTs whose `norm` is Identity, their `fc_norm`)."""
        bb = self.backbone
        if isinstance(bb.norm, nn.Identity) and not isinstance(getattr(bb, "fc_norm", nn.Identity()), nn.Identity):
            return bb.fc_norm
        return bb.norm

    def _prompts(self, p: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
        # One dropout mask per forward, shared by the batch (the reference drops P before expanding it).
        return self.prompt_dropout(p).to(dtype).unsqueeze(0).expand(batch, -1, -1)

    def last_block_input(self, images: torch.Tensor) -> torch.Tensor:
        """Tokens entering the last block, [B, C+n_p+M, D] with the class prompts first (§1.2 ordering).

        The backbone runs under the current grad mode; nothing before the prompts requires grad.
        """
        bb = self.backbone
        x = bb.norm_pre(bb.patch_drop(bb._pos_embed(bb.patch_embed(images))))  # prompts get no position embedding
        B, L, i = x.shape[0], len(bb.blocks), self.class_from_block
        for j, blk in enumerate(bb.blocks[: L - 1]):
            if j < i:
                x = blk(torch.cat([self._prompts(self.agnostic_prompts[j], B, x.dtype), x], 1))[:, self.n_agnostic:]
            elif j == i:
                x = blk(torch.cat([self._prompts(self.class_prompts, B, x.dtype), x], 1))  # carried to the end
            else:
                x = blk(x)
        if i == L - 1:
            x = torch.cat([self._prompts(self.class_prompts, B, x.dtype), x], 1)
        return x

    def score(self, z: torch.Tensor) -> torch.Tensor:
        """Shared scorer on class-prompt outputs: head(norm(z)), [..., C, D] → [..., C] (or [..., D] → [...])."""
        return self.head(self._final_norm()(z)).squeeze(-1)

    def forward(self, images: torch.Tensor, return_maps: bool | None = None) -> ModelOutput:
        """Logits [B,C] and, in eval mode or when asked, maps [B,C,R,g_h,g_w] (§1.2).

        Args:
            images: [B,3,H,W] in the backbone's input space (any size a `dynamic_img_size` ViT accepts).
            return_maps: compute the native maps; None = only in eval mode (training keeps fused attention).
        """
        want_maps = (not self.training) if return_maps is None else return_maps
        C = self.num_classes
        x = self.last_block_input(images)
        blk = self.backbone.blocks[-1]
        if want_maps:
            with AttentionProbe(self.backbone, blocks=[-1], capture=("attn",)) as probe:
                z = blk(x)
            attn = probe.attn[len(self.backbone.blocks) - 1]
        else:
            z = blk(x)
        logits = self.score(z[:, :C])
        out = ModelOutput(logits=logits)
        if want_maps:
            layout = vit_layout(self.backbone, tuple(images.shape[-2:]))
            out.maps = self._maps_from_attention(attn, layout.num_prefix_tokens, layout.grid)
            out.aux["prompt_attention"] = attn[:, :, :C]
        return out

    def _maps_from_attention(self, attn: torch.Tensor, n_p: int, grid: tuple[int, int]) -> torch.Tensor:
        """map[b,c,r] = A_L[b,r,c,C+n_p:] → [B,C,R,g_h,g_w]; 'patches' renormalises over the M patches (§1.2)."""
        C = self.num_classes
        rows = attn[:, :, :C, C + n_p:]  # [B,R,C,M]
        if self.attn_keys == "patches":
            rows = rows / rows.sum(-1, keepdim=True)
        B, R = rows.shape[:2]
        return rows.permute(0, 2, 1, 3).reshape(B, C, R, *grid)

    # -- blurring (§1.5) -----------------------------------------------------------------------------------------
    def _check_blurrable(self) -> tuple[nn.Module, nn.Module]:
        blk = self.backbone.blocks[-1]
        if type(blk) is not TimmBlock or type(blk.attn) is not TimmAttention:
            raise UnsupportedAttentionError(
                f"head blurring rewrites the last block's pre-softmax scores; it supports timm's Block/Attention, "
                f"not {type(blk).__name__}/{type(blk.attn).__name__}"
            )
        return blk, blk.attn

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(y = norm1(x), S [B,R,N,N], v [B,R,N,d_h]) exactly as timm's non-fused Attention computes them."""
        blk, attn = self._check_blurrable()
        y = blk.norm1(x)
        B, N, _ = y.shape
        qkv = attn.qkv(y).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        s = (q * attn.scale) @ k.transpose(-2, -1)
        return y, s, v

    def _finish_block(self, x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Rest of timm's Block after the softmax: attn_drop, A·v, norm, gate, proj, residuals and MLP."""
        blk, attn = self._check_blurrable()
        o = attn.attn_drop(a) @ v
        o = o.transpose(-3, -2).reshape(*o.shape[:-3], o.shape[-2], attn.attn_dim)
        o = attn.norm(o)
        if attn.gate is not None:
            o = o * attn.gate(y).sigmoid()
        o = attn.proj_drop(attn.proj(o))
        x = x + blk.drop_path1(blk.ls1(o))
        return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))

    def _blurred_rows(self, s: torch.Tensor, blurred: torch.Tensor, n_p: int, blur: str) -> torch.Tensor:
        """Post-softmax rows with the blurred heads made uniform: s [..,R,N] pre-softmax, blurred bool [..,R]."""
        a = s.softmax(-1)
        if blur == "all":
            # Pre-softmax logits set to 0 → uniform 1/(C+N) over every key (reference).
            uniform = torch.zeros_like(s).softmax(-1)
        else:
            uniform = torch.zeros_like(s)
            uniform[..., self.num_classes + n_p:] = 1.0 / (s.shape[-1] - self.num_classes - n_p)
        return torch.where(blurred[..., None], uniform, a)

    def blurred_logits(self, images: torch.Tensor, target: int | torch.Tensor, heads: Sequence[int],
                       blur: str = "all") -> torch.Tensor:
        """Logits [B,C] of the full forward with heads `heads` of class prompt `target` blurred in the last block.

        Only row `target` of the last block's attention changes, so only s_target changes; the other logits are
        bit-identical to `forward(images, return_maps=True)` (oracle §1.10.5).
        """
        if blur not in BLURS:
            raise ValueError(f"unknown blur '{blur}'; choose from {BLURS}")
        x = self.last_block_input(images)
        y, s, v = self._qkv(x)
        B, R = s.shape[:2]
        n_p = vit_layout(self.backbone, tuple(images.shape[-2:])).num_prefix_tokens
        a = s.softmax(-1)
        rows = torch.as_tensor(target, device=x.device).reshape(-1).expand(B)
        mask = torch.zeros(B, R, dtype=torch.bool, device=x.device)
        mask[:, list(heads)] = True
        idx = torch.arange(B, device=x.device)
        a = a.clone()
        a[idx, :, rows] = self._blurred_rows(s[idx, :, rows], mask, n_p, blur)
        z = self._finish_block(x, y, a, v)
        return self.score(z[:, : self.num_classes])

    def class_row_scores(self, x: torch.Tensor, target: torch.Tensor, blurred: torch.Tensor, n_p: int,
                         blur: str = "all") -> torch.Tensor:
        """s_c for candidate blur sets in one batched pass of row c only: last block → norm → head (§1.5 cost).

        Args:
            x: cached last-block input [B,N,D].
            target: [B] class per image.
            blurred: bool [n_cand,B,R] heads blurred per candidate.
            n_p: prefix tokens.

        Returns:
            [n_cand,B] scores of the target class.
        """
        y, s, v = self._qkv(x)
        idx = torch.arange(x.shape[0], device=x.device)
        s_c = s[idx, :, target]  # [B,R,N]
        a_c = self._blurred_rows(s_c.unsqueeze(0).expand(blurred.shape[0], *s_c.shape), blurred, n_p, blur)
        # Row c of the block, for every candidate: A_c·v per head, then the same projections as the block.
        blk, attn = self._check_blurrable()
        o = (attn.attn_drop(a_c).unsqueeze(-2) @ v).squeeze(-2)  # [n,B,R,d_h]
        o = attn.norm(o.reshape(*o.shape[:2], attn.attn_dim))
        if attn.gate is not None:
            o = o * attn.gate(y[idx, target]).sigmoid()
        xc = x[idx, target] + blk.drop_path1(blk.ls1(attn.proj_drop(attn.proj(o))))
        xc = xc + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(xc))))
        return self.score(xc)


# ------------------------------------------------------------------------------------------------------------------
# Head ranking (§1.5)
# ------------------------------------------------------------------------------------------------------------------

@dataclass
class HeadRanking:
    """Result of `rank_heads`.

    Attributes:
        order: [B,R] head indices, most important first (survivors by last-round score ascending, then the
            removed heads in reverse removal order).
        num_kept: [B] survivors per image (k for 'keep_k'; variable for 'until_misclassified').
        removal_scores: per image, the criterion value of each removal round's winner (the score with it blurred).
        evaluations: number of candidate evaluations run (Σ_{j=k+1..R} j for 'keep_k').
    """

    order: torch.Tensor
    num_kept: torch.Tensor
    removal_scores: list[list[float]]
    evaluations: int

    def top(self, k: int | None = None) -> list[list[int]]:
        """The top-k heads per image (default: the survivors)."""
        return [self.order[b, : (k if k is not None else int(self.num_kept[b]))].tolist()
                for b in range(self.order.shape[0])]


@torch.no_grad()
def rank_heads(
    net: PromptCAM,
    images: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor,
    k: int = 4,
    blur: str = "all",
    criterion: str = "prob",
    stop: str = "keep_k",
) -> HeadRanking:
    """Rank the last block's heads for class `target` by progressive blurring (models.md §1.5).

    Greedy: while more than k heads remain, score every remaining head r with blurred ∪ {r} and blur the one
    whose loss hurts least (highest score; ties to the lower index). Importance = reverse removal order, survivors
    ordered by their last-round scores, lowest first. The last block's input is computed once; each round is one
    batched pass of row c only. The winner is chosen on s_c for both criteria: blurring row c changes only s_c
    and p_c is strictly increasing in s_c, so 'prob' and 'logit' rank identically (§1.10.5) and float saturation
    of p_c cannot create false ties.

    Args:
        net: a Prompt-CAM model (eval mode recommended).
        images: [B,3,H,W] in the model's input space.
        target: class per image (int, list or [B] tensor).
        k: survivors for `stop='keep_k'` (reference `top_traits`, default 4).
        blur: "all" (reference: row uniform over all keys) or "patches" (paper: uniform 1/M over patches).
        criterion: "prob" (reference) or "logit" (paper); the scores reported in `removal_scores`.
        stop: "keep_k" (reference) or "until_misclassified" (paper: stop before the prediction would leave c).

    Returns:
        A `HeadRanking`.
    """
    for name, value, allowed in (("blur", blur, BLURS), ("criterion", criterion, CRITERIA), ("stop", stop, STOPS)):
        if value not in allowed:
            raise ValueError(f"unknown {name} '{value}'; choose from {allowed}")
    if not isinstance(net, PromptCAM):
        raise TypeError(f"rank_heads needs a PromptCAM model, not {type(net).__name__}")
    if images.dim() == 3:
        images = images[None]
    B = images.shape[0]
    tgt = torch.as_tensor(target, device=images.device).reshape(-1).long().expand(B).contiguous()
    x = net.last_block_input(images)
    n_p = vit_layout(net.backbone, tuple(images.shape[-2:])).num_prefix_tokens
    R = net.backbone.blocks[-1].attn.num_heads
    if not 0 <= k <= R:
        raise ValueError(f"k must be in 0..{R}, got {k}")
    # The other logits never change (only row c is blurred): compute them once with the exact block.
    base = net.score(net._finish_block(x, *_softmaxed(net, x)))  # [B,C]
    orders, kept, removal_scores, evaluations = [], [], [], 0
    for b in range(B):
        c = int(tgt[b])
        others = torch.cat([base[b, :c], base[b, c + 1 :]])
        xb, tb = x[b : b + 1], tgt[b : b + 1]
        remaining, removed, scores_b = list(range(R)), [], []
        last_scores: dict[int, float] = {}
        min_keep = k if stop == "keep_k" else 1
        while len(remaining) > min_keep:
            cand = torch.zeros(len(remaining), 1, R, dtype=torch.bool, device=x.device)
            cand[:, :, removed] = True
            cand[torch.arange(len(remaining)), 0, remaining] = True
            s_c = net.class_row_scores(xb, tb, cand, n_p, blur)[:, 0]  # [n_cand]
            evaluations += len(remaining)
            last_scores = {r: float(v) for r, v in zip(remaining, s_c.tolist(), strict=True)}
            win = int(torch.argmax(s_c))  # first maximum = lower head index on ties
            if stop == "until_misclassified":
                changed = base[b].clone()
                changed[c] = s_c[win]
                if int(changed.argmax()) != c:
                    break  # blurring even the least useful head would lose class c: keep the rest
            r_star = remaining.pop(win)
            removed.append(r_star)
            scores_b.append(_criterion(s_c[win], others, criterion))
        if not last_scores and remaining:
            # No round ran (k = R): score the survivors once to order them.
            cand = torch.zeros(len(remaining), 1, R, dtype=torch.bool, device=x.device)
            cand[:, :, removed] = True
            cand[torch.arange(len(remaining)), 0, remaining] = True
            s_c = net.class_row_scores(xb, tb, cand, n_p, blur)[:, 0]
            evaluations += len(remaining)
            last_scores = {r: float(v) for r, v in zip(remaining, s_c.tolist(), strict=True)}
        survivors = sorted(remaining, key=lambda r: (last_scores[r], r))
        orders.append(survivors + removed[::-1])
        kept.append(len(survivors))
        removal_scores.append(scores_b)
    return HeadRanking(torch.tensor(orders, dtype=torch.long), torch.tensor(kept), removal_scores, evaluations)


def _softmaxed(net: PromptCAM, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    y, s, v = net._qkv(x)
    return y, s.softmax(-1), v


def _criterion(s_c: torch.Tensor, others: torch.Tensor, criterion: str) -> float:
    if criterion == "logit":
        return float(s_c)
    return float(torch.sigmoid(s_c - torch.logsumexp(others, 0))) if others.numel() else 1.0


# ------------------------------------------------------------------------------------------------------------------
# Trait removal (§1.6)
# ------------------------------------------------------------------------------------------------------------------

def gaussian_blur(images: torch.Tensor, size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """Depthwise Gaussian blur (11×11, σ = 5 by default) with reflect padding, [B,C,H,W] → same."""
    r = size // 2
    t = torch.arange(size, dtype=images.dtype, device=images.device) - r
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    C = images.shape[1]
    pad_mode = "reflect" if min(images.shape[-2:]) > r else "replicate"
    x = F.pad(images, (r, r, r, r), mode=pad_mode)
    x = F.conv2d(x, g.view(1, 1, 1, size).expand(C, 1, 1, size).contiguous(), groups=C)
    return F.conv2d(x, g.view(1, 1, size, 1).expand(C, 1, size, 1).contiguous(), groups=C)


def noisy_linear_impute(images: torch.Tensor, mask: torch.Tensor, noise: float = 0.01, tol: float = 1e-6,
                        max_iter: int = 5000, generator: torch.Generator | None = None) -> torch.Tensor:
    """ROAD's noisy linear imputation (metrics.md §1.4) of the pixels where `mask` is True.

    Each removed pixel equals the weighted mean of its in-image 8-neighbours (1/6 edge, 1/12 diagonal), solved
    jointly by Jacobi iteration (the system is diagonally dominant), then N(0, noise²) is added.

    Args:
        images: [B,C,H,W]. mask: bool [B,H,W] (True = remove).
    """
    w = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]],
                     dtype=images.dtype, device=images.device)
    C = images.shape[1]
    kernel = w.view(1, 1, 3, 3).expand(C, 1, 3, 3).contiguous()
    m = mask[:, None].to(images.dtype).expand_as(images)
    ones = torch.ones_like(images[:, :1])
    denom = F.conv2d(F.pad(ones, (1, 1, 1, 1)), w.view(1, 1, 3, 3))  # neighbour weight inside the image
    kept = 1 - m
    fill = (images * kept).sum((-2, -1), keepdim=True) / kept.sum((-2, -1), keepdim=True).clamp_min(1)
    x = images * kept + fill * m
    for _ in range(max_iter):
        avg = F.conv2d(F.pad(x, (1, 1, 1, 1)), kernel, groups=C) / denom
        new = images * kept + avg * m
        if (new - x).abs().max() < tol:
            x = new
            break
        x = new
    if noise > 0:
        x = x + m * noise * torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    return x


def top_fraction_region(head_map: torch.Tensor, fraction: float = 0.1) -> torch.Tensor:
    """Bool mask of the top `fraction` cells of a map [..., h, w] (at least one cell): a head's region (§1.6)."""
    flat = head_map.flatten(-2)
    n = max(1, round(fraction * flat.shape[-1]))
    idx = flat.topk(n, dim=-1).indices
    out = torch.zeros_like(flat, dtype=torch.bool).scatter_(-1, idx, True)
    return out.view(head_map.shape)


@dataclass
class TraitRemoval:
    """Result of `trait_removal`, per image.

    Attributes:
        delta_score: [B] Δs_c = s_c(after) − s_c(before).
        delta_prob: [B] Δp_c.
        pred_before, pred_after: [B] predictions. flipped: [B] bool.
        mass_before, mass_after: [B,R] attention mass m_r of prompt c's head r inside the region.
        region_patches: bool [B,g_h,g_w] the region on the patch grid.
        edited: [B,3,H,W] the edited images.
    """

    delta_score: torch.Tensor
    delta_prob: torch.Tensor
    pred_before: torch.Tensor
    pred_after: torch.Tensor
    flipped: torch.Tensor
    mass_before: torch.Tensor
    mass_after: torch.Tensor
    region_patches: torch.Tensor
    edited: torch.Tensor

    @property
    def mass_drop(self) -> torch.Tensor:
        """[B,R] m_r(before) − m_r(after): the head with the largest drop "looked at" the trait."""
        return self.mass_before - self.mass_after


@torch.no_grad()
def trait_removal(
    net: PromptCAM,
    images: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor,
    region: torch.Tensor,
    substrate: str | torch.Tensor = "blur",
    generator: torch.Generator | None = None,
) -> TraitRemoval:
    """Erase a region and measure the class score drop and each head's attention-mass drop (models.md §1.6).

    Args:
        net: a Prompt-CAM model.
        images: [B,3,H,W] (or [3,H,W]) in the model's input space.
        target: class c per image.
        region: bool [B,H,W] / [H,W] pixel mask, or a patch-grid mask [B,g_h,g_w] / [g_h,g_w] (e.g. from
            `top_fraction_region`). A patch is in the region when at least half its area is.
        substrate: "blur" (Gaussian 11×11, σ = 5), "mean" (per-image channel mean), "road" (noisy linear
            imputation), or a tensor of edited images of the same shape.
        generator: RNG for the 'road' noise.

    Returns:
        A `TraitRemoval`; 2 forwards per image, batched.
    """
    if images.dim() == 3:
        images = images[None]
    B, _, H, W = images.shape
    layout = vit_layout(net.backbone, (H, W))
    g_h, g_w = layout.grid
    p_h, p_w = layout.patch_size
    region = region.to(images.device).bool()
    if region.dim() == 2:
        region = region[None].expand(B, *region.shape)
    if tuple(region.shape[-2:]) == (g_h, g_w) and (g_h, g_w) != (H, W):
        patches = region
        pixel = patches.float().repeat_interleave(p_h, 1).repeat_interleave(p_w, 2)
        pixel = F.pad(pixel, (0, W - pixel.shape[-1], 0, H - pixel.shape[-2])) > 0.5
    elif tuple(region.shape[-2:]) == (H, W):
        pixel = region
        cover = F.avg_pool2d(pixel[:, None].float()[..., : g_h * p_h, : g_w * p_w], (p_h, p_w))[:, 0]
        patches = cover >= 0.5
    else:
        raise ValueError(f"region shape {tuple(region.shape)} matches neither the image {(H, W)} nor the grid "
                         f"{(g_h, g_w)}")
    if isinstance(substrate, torch.Tensor):
        fill = substrate.to(images).expand_as(images)
    elif substrate == "blur":
        fill = gaussian_blur(images)
    elif substrate == "mean":
        fill = images.mean((-2, -1), keepdim=True).expand_as(images)
    elif substrate == "road":
        fill = noisy_linear_impute(images, pixel, generator=generator)
    else:
        raise ValueError(f"unknown substrate '{substrate}'; choose from {SUBSTRATES} or pass an image tensor")
    edited = torch.where(pixel[:, None], fill, images)
    out = net.native_maps(torch.cat([images, edited]))
    tgt = torch.as_tensor(target, device=images.device).reshape(-1).long().expand(B)
    idx = torch.arange(B, device=images.device)
    logits, maps = out.logits, out.maps  # [2B,C], [2B,C,R,h,w]
    s = logits[torch.cat([idx, idx + B]), torch.cat([tgt, tgt])]
    p = logits.softmax(-1)[torch.cat([idx, idx + B]), torch.cat([tgt, tgt])]
    head = maps[torch.cat([idx, idx + B]), torch.cat([tgt, tgt])]  # [2B,R,h,w]
    inside = (head * patches.repeat(2, 1, 1)[:, None]).sum((-2, -1))
    mass = inside / head.sum((-2, -1)).clamp_min(1e-12)
    pred = logits.argmax(-1)
    return TraitRemoval(
        delta_score=s[B:] - s[:B], delta_prob=p[B:] - p[:B], pred_before=pred[:B], pred_after=pred[B:],
        flipped=pred[:B] != pred[B:], mass_before=mass[:B], mass_after=mass[B:], region_patches=patches,
        edited=edited,
    )


@torch.no_grad()
def trait_head_matrix(
    net: PromptCAM,
    images: torch.Tensor,
    labels: torch.Tensor,
    trait_masks: torch.Tensor,
    substrate: str = "blur",
    batch_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """[slots × heads] mean attention-mass drop when each trait is erased (TraitShapes, models.md §1.6).

    Args:
        images: [N,3,H,W] model input space. labels: [N]. trait_masks: bool [N,S,H,W].

    Returns:
        (mass drop [S,R] averaged over images whose trait covers ≥ 1 patch, score drop [S] = mean −Δs_c).
    """
    N, S = trait_masks.shape[:2]
    R = net.backbone.blocks[-1].attn.num_heads
    drop = torch.zeros(S, R)
    score = torch.zeros(S)
    count = torch.zeros(S)
    for start in range(0, N, batch_size):
        sl = slice(start, start + batch_size)
        for s in range(S):
            res = trait_removal(net, images[sl], labels[sl], trait_masks[sl, s], substrate=substrate)
            ok = res.region_patches.flatten(1).any(1).cpu()
            drop[s] += res.mass_drop.cpu()[ok].sum(0)
            score[s] += (-res.delta_score.cpu()[ok]).sum()
            count[s] += ok.sum()
    c = count.clamp_min(1)
    return drop / c[:, None], score / c


# ------------------------------------------------------------------------------------------------------------------
# Prompt-only checkpoints (§1.3)
# ------------------------------------------------------------------------------------------------------------------

PROMPT_KEYS = ("agnostic_prompts", "class_prompts", "head.weight", "head.bias")


def backbone_hash(backbone: nn.Module) -> str:
    """SHA-256 over the backbone's state dict (names, dtypes, shapes and bytes, in sorted key order)."""
    h = hashlib.sha256()
    for name, t in sorted(backbone.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_prompts(net: PromptCAM, path: str | Path) -> Path:
    """Write only the prompts and the scorer (plus the rebuild config and the backbone hash) to a safetensors file.

    A few MB instead of the backbone's full state dict (the reference stores ~86M parameters); `load_prompts`
    re-attaches them to the same backbone and refuses a different one.
    """
    from safetensors.torch import save_file

    from traitlens._io import atomic_write

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items() if k in PROMPT_KEYS}
    meta = {"traitlens_config": json.dumps(net.traitlens_config), "backbone_sha256": backbone_hash(net.backbone),
            "class_names": json.dumps(getattr(net, "class_names", None))}
    return atomic_write(path, lambda p: save_file(state, str(p), metadata=meta))


def load_prompts(path: str | Path, backbone: str | Path | nn.Module, check_hash: bool = True,
                 **backbone_kwargs: Any) -> PromptCAM:
    """Rebuild a Prompt-CAM from a `save_prompts` file and its backbone (timm name, directory or module).

    Raises:
        ValueError: the backbone's hash differs from the one the prompts were trained on (`check_hash=True`).
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is not a dict)
    config = json.loads(meta["traitlens_config"])
    net = PromptCAM(backbone, config["num_classes"], **config.get("options", {}),
                    class_names=json.loads(meta.get("class_names", "null")), **backbone_kwargs)
    if check_hash and backbone_hash(net.backbone) != meta["backbone_sha256"]:
        raise ValueError(f"{path} was trained on another backbone (hash mismatch); pass the same backbone weights "
                         "or check_hash=False")
    missing = set(PROMPT_KEYS) - set(state)
    if missing:
        raise ValueError(f"{path} lacks {sorted(missing)}")
    net.load_state_dict(state, strict=False)
    return net.eval()


@register_builder("promptcam")
def _build(config: dict[str, Any]) -> PromptCAM:
    return PromptCAM(config["backbone"], config["num_classes"], **config.get("options", {}),
                     class_names=config.get("class_names"))
