"""Trait removal on Prompt-CAM (models.md §1.6): erase a region, measure the class score drop and each head's
attention-mass drop; `trait_head_matrix` does it for every trait of a TraitShapes image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from traitlens.backbones.introspect import vit_layout
from traitlens.models.promptcam import PromptCAM
from traitlens.ops.imputation import noisy_linear_impute

__all__ = [
    "SUBSTRATES",
    "TraitRemoval",
    "gaussian_blur",
    "noisy_linear_impute",
    "top_fraction_region",
    "trait_head_matrix",
    "trait_removal",
]

SUBSTRATES = ("blur", "mean", "road")


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
    out = net.forward_maps(torch.cat([images, edited]))
    tgt = torch.as_tensor(target, device=images.device).reshape(-1).long().expand(B)
    idx = torch.arange(B, device=images.device)
    logits, maps = out.logits, out.maps  # [2B,C], [2B,C,R,h,w]
    assert maps is not None  # forward_maps always returns them
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
    R = net.vit.blocks[-1].attn.num_heads
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
