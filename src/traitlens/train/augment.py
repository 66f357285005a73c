"""Batch augmentation on the device: random horizontal flips and small translations, per image.

Cheap enough for the in-memory fast path (no per-item transform). Translations by up to half a patch make the
same trait land at different offsets inside the ViT's patches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["flip_and_shift"]


def flip_and_shift(images: torch.Tensor, generator: torch.Generator, flip: bool = True,
                   max_shift: int = 0) -> torch.Tensor:
    """Flip each image of [B,C,H,W] left-right with probability 1/2 and translate it by integers in
    [-max_shift, max_shift] along each axis, filling with the replicated border. `generator` (CPU) draws everything.
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    B, _, H, W = images.shape
    if flip:
        flipped = (torch.rand(B, generator=generator) < 0.5).to(images.device).view(B, 1, 1, 1)
        images = torch.where(flipped, images.flip(-1), images)
    if max_shift:
        s, C = max_shift, images.shape[1]
        padded = F.pad(images, (s, s, s, s), mode="replicate").flatten(2)  # [B,C,(H+2s)(W+2s)]
        dy = torch.randint(0, 2 * s + 1, (B, 1, 1), generator=generator).to(images.device)
        dx = torch.randint(0, 2 * s + 1, (B, 1, 1), generator=generator).to(images.device)
        rows = dy + torch.arange(H, device=images.device).view(1, H, 1)
        cols = dx + torch.arange(W, device=images.device).view(1, 1, W)
        index = (rows * (W + 2 * s) + cols).view(B, 1, H * W).expand(B, C, H * W)
        images = padded.gather(2, index).view(B, C, H, W)
    return images
