"""Prompt-CAM (Chowdhury et al., CVPR 2025, arXiv 2501.09333; models.md §1) on any timm ViT.

Class-specific prompts in front of a **frozen** ViT and one shared scorer. Prompt c's last-block attention to
the patches is the native map of class c, per head. Head ranking by blurring (§1.5) is in `head_ranking`, the
trait-removal analysis (§1.6) in `trait_removal`, prompt-only checkpoints (§1.3) in `prompt_checkpoint`.

Example:
    >>> net = PromptCAM("vit_small_patch16_224.dino", num_classes=200)  # doctest: +SKIP
    >>> logits = net.eval()(x)  # [B,200]  # doctest: +SKIP
    >>> out = net.forward_maps(x)  # out.logits [B,200], out.maps [B,200,6,14,14]  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn as nn
from timm.layers import Attention as TimmAttention
from timm.models.vision_transformer import Block as TimmBlock

from traitlens.backbones.introspect import is_vit, vit_layout
from traitlens.backbones.probe import AttentionProbe, UnsupportedAttentionError
from traitlens.backbones.protocols import ViTLike, as_vit
from traitlens.models.backbone import build_backbone, set_drop_path
from traitlens.models.base import InterpretableModel
from traitlens.models.outputs import ModelOutput
from traitlens.models.registry import RecipeVariant, register_model_kind
from traitlens.train import FitConfig

__all__ = ["ATTN_KEYS", "BLURS", "VARIANTS", "PromptCAM"]

log = logging.getLogger(__name__)

VARIANTS = ("deep", "shallow", "interpolated")
ATTN_KEYS = ("all", "patches")
BLURS = ("all", "patches")

#: Names that lived here before the module was split, and where they live now (still importable from here).
_MOVED = {
    "HeadRanking": "head_ranking", "rank_heads": "head_ranking", "CRITERIA": "head_ranking", "STOPS": "head_ranking",
    "TraitRemoval": "trait_removal", "trait_removal": "trait_removal", "trait_head_matrix": "trait_removal",
    "top_fraction_region": "trait_removal", "gaussian_blur": "trait_removal", "noisy_linear_impute": "trait_removal",
    "SUBSTRATES": "trait_removal",
    "backbone_hash": "prompt_checkpoint", "save_prompts": "prompt_checkpoint", "load_prompts": "prompt_checkpoint",
    "PROMPT_KEYS": "prompt_checkpoint",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        module = f"traitlens.models.{_MOVED[name]}"
        warnings.warn(f"traitlens.models.promptcam.{name} moved to {module}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: The reference normalises with mean = std = 0.5 for every backbone (`data/dataset/utils.py` uses timm's
#: IMAGENET_INCEPTION_MEAN/STD), not the backbone's own ImageNet statistics.
_HALF = [0.5, 0.5, 0.5]


@register_model_kind(
    "promptcam",
    summary="class prompts on a frozen ViT; prompt c's last-block attention is class c's map, per head",
    recipes={
        # The reference, DINO ViT-B/16 on CUB (§1.7; `experiment/config/prompt_cam/dino/cub/args.yaml`, every value in
        # docs/recipes.md): SGD 0.9, wd 1e-3 on every tuned parameter, lr 5e-3, timm cosine per epoch (20 warm-up
        # epochs from 0, floor 1e-6), 130 epochs, batch 16 × 4 GPUs, CE only; train Resize 240 → RandomCrop 224 → flip.
        "reference": FitConfig(epochs=130, mode="model", optimizer="sgd", lr=5e-3, weight_decay=1e-3,
                               weight_decay_all=True, schedule="cosine", schedule_per="epoch", warmup_epochs=20,
                               warmup_lr=0.0, min_lr=1e-6, batch_size=64, label_smoothing=0.0, seed=42,
                               selection="val", augment_flip=True, augment_crop=True, crop_resize=240),
        # Tiny TraitShapes backbones on 2 CPU cores. lr 3e-2: the few prompt parameters underfit at 1e-2
        # (docs/models_evidence.md, "Deep Prompt-CAM: learning rate"); batch 32 and 6 epochs: steadier across seeds
        # than 64 × 4 (docs/history.md, "Quickstart by-design models").
        "quick": FitConfig(epochs=6, mode="model", optimizer="adamw", lr=3e-2, weight_decay=0.0,
                           schedule="onecycle", batch_size=32, label_smoothing=0.0, seed=0, selection="val"),
    },
    # The frozen ViT's stochastic depth stays off while the prompts train: on a backbone pre-trained with it
    # (`traitlens-vit-tiny-gap`) it would skip the block holding Deep's class prompts. Shallow (class prompts from
    # block 0, the paper's variant): Deep reads only the patch tokens entering the last block, and a class-token ViT
    # such as the quickstart's has moved the evidence into CLS by then (docs/history.md, "Prompt-CAM in the
    # quickstart").
    quick_options={"drop_path": 0.0, "variant": "shallow"},
    # DINO configs: vpt_dropout 0.1, drop_path_rate 0.1; Deep prompts (the released code's only variant).
    reference_options={"variant": "deep", "prompt_dropout": 0.1, "drop_path": 0.1,
                       "backbone_args": {"pretrained_cfg_overlay": {"mean": _HALF, "std": _HALF}}},
    variants={"reference": (
        # `experiment/config/prompt_cam/dinov2/cub/args.yaml`: lr 1e-3, warm-up from 1e-6, no dropout or drop-path,
        # 224 px (the position embedding resampled from 518).
        RecipeVariant(("*dinov2*",), fit={"lr": 1e-3, "warmup_lr": 1e-6},
                      options={"prompt_dropout": 0.0, "drop_path": 0.0, "backbone_args": {"img_size": 224}},
                      note="DINOv2 configs"),
    )},
    notes=(
        "reference trains epoch e at the rate scheduled for e-1 (it steps timm's scheduler after the epoch), so its "
        "first two epochs run at warmup_lr; traitlens uses rate e in epoch e",
        "reference selects the best top-1 on its test split; traitlens selects on a validation split",
        "reference drops the last incomplete batch of each epoch (drop_last=True); traitlens trains on it",
        "lr 1e-2 for Cars and Birds-525, DINO 100 epochs off CUB: set them with overrides",
    ),
)
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

    reference_selection = "best_val"  # the reference keeps the best top-1 measured on its test split
    #: "prompted_vit": `backbone`, `last_block_input` and `score` let CDAM and Grad-CAM-ViT read the last block.
    traitlens_families = ("native", "logits", "prompted_vit")

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
        L = len(self.vit.blocks)
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
        D = int(getattr(module, "embed_dim"))  # noqa: B009 (a timm ViT attribute nn.Module does not type)
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

    @property
    def vit(self) -> ViTLike:
        """The frozen backbone typed as the timm ViT it is (checked in `__init__`)."""
        return as_vit(self.backbone)

    # -- forward -------------------------------------------------------------------------------------------------
    def _final_norm(self) -> nn.Module:
        """The pre-trained final norm (for 'avg'-pooled ViTs whose `norm` is Identity, their `fc_norm`)."""
        bb = self.vit
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
        bb = self.vit
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

    def forward_output(self, images: torch.Tensor, return_maps: bool | None = None) -> ModelOutput:
        """Logits [B,C] and, in eval mode or when asked, maps [B,C,R,g_h,g_w] (§1.2).

        Args:
            images: [B,3,H,W] in the backbone's input space (any size a `dynamic_img_size` ViT accepts).
            return_maps: compute the native maps; None = only in eval mode (training keeps fused attention).
        """
        want_maps = (not self.training) if return_maps is None else return_maps
        C = self.num_classes
        x = self.last_block_input(images)
        blk = self.vit.blocks[-1]
        if want_maps:
            with AttentionProbe(self.backbone, blocks=[-1], capture=("attn",)) as probe:
                z = blk(x)
            attn = probe.attn[len(self.vit.blocks) - 1]
        else:
            z = blk(x)
        logits = self.score(z[:, :C])
        out = ModelOutput(logits=logits)
        if want_maps:
            layout = vit_layout(self.backbone, (images.shape[-2], images.shape[-1]))
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
    def _check_blurrable(self) -> tuple[TimmBlock, TimmAttention]:
        blk = self.vit.blocks[-1]
        if type(blk) is not TimmBlock or type(blk.attn) is not TimmAttention:
            raise UnsupportedAttentionError(
                f"head blurring rewrites the last block's pre-softmax scores; it supports timm's Block/Attention, "
                f"not {type(blk).__name__}/{type(blk.attn).__name__}"
            )
        return cast(TimmBlock, blk), cast(TimmAttention, blk.attn)

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
        n_p = vit_layout(self.backbone, (images.shape[-2], images.shape[-1])).num_prefix_tokens
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
