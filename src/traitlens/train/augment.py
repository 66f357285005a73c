"""Batch augmentation on the device: random flips, small translations and resize-then-crop, per image.

Cheap enough for the in-memory fast path (no per-item transform). Translations by up to half a patch make the
same trait land at different offsets inside the ViT's patches. `resize_and_crop` is the references'
`Resize → RandomCrop` (train) and `Resize → CenterCrop` (eval) on a batch (docs/recipes.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from traitlens.backbones.preprocess import data_config

if TYPE_CHECKING:
    from traitlens.train.trainer import FitConfig

__all__ = ["CROP_FRACTION", "crop_resize_size", "eval_transform", "flip_and_shift", "input_hw", "resize_and_crop"]

#: Default share of the resized image a crop keeps (224 of 256: the ImageNet / timm `crop_pct` convention).
CROP_FRACTION = 0.875


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


def crop_resize_size(crop: tuple[int, int], resize: int = 0) -> tuple[int, int]:
    """(H, W) to resize to before cropping `crop` = (h, w).

    `resize` = 0: each side divided by `CROP_FRACTION` and rounded (224 → 256, 800 → 914). Otherwise the image is
    scaled so that its shorter side is `resize` (Prompt-CAM's Resize(240) before RandomCrop(224): 224 → 240).

    Raises:
        ValueError: a resize smaller than the crop.
    """
    h, w = crop
    if resize < 0:
        raise ValueError(f"crop_resize must be >= 0 pixels, got {resize}")
    scale = (1.0 / CROP_FRACTION) if resize == 0 else resize / min(h, w)
    size = (round(h * scale), round(w * scale))
    if size[0] < h or size[1] < w:
        raise ValueError(f"crop_resize {resize} is smaller than the crop {h}x{w}")
    return size


def resize_and_crop(images: torch.Tensor, crop: tuple[int, int], resize: tuple[int, int],
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Resize [B,C,H,W] to `resize` = (H', W') (bilinear, antialiased; skipped when the batch already has that size),
    then crop `crop` = (h, w): a window at a random offset per image drawn from `generator` (train), or the centre
    window when `generator` is None (eval; offsets rounded as torchvision's CenterCrop does).
    """
    h, w = crop
    if resize[0] < h or resize[1] < w:
        raise ValueError(f"resize {resize} is smaller than the crop {crop}")
    if tuple(images.shape[-2:]) != tuple(resize):
        images = F.interpolate(images, size=resize, mode="bilinear", align_corners=False, antialias=True)
    B, C, H, W = images.shape
    if generator is None:
        top, left = round((H - h) / 2.0), round((W - w) / 2.0)
        return images[:, :, top:top + h, left:left + w]
    dy = torch.randint(0, H - h + 1, (B, 1, 1), generator=generator).to(images.device)
    dx = torch.randint(0, W - w + 1, (B, 1, 1), generator=generator).to(images.device)
    rows = dy + torch.arange(h, device=images.device).view(1, h, 1)
    cols = dx + torch.arange(w, device=images.device).view(1, 1, w)
    index = (rows * W + cols).view(B, 1, h * w).expand(B, C, h * w)
    return images.flatten(2).gather(2, index).view(B, C, h, w)


def eval_transform(model: nn.Module, cfg: FitConfig) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The recipe's evaluation preprocessing of image batches in [0, 1]: with `eval_crop`, resize (as `crop_resize`)
    and centre-crop to the model's input size; None otherwise. Pass it to `evaluate_accuracy` for a test set."""
    if not cfg.eval_crop:
        return None
    crop = input_hw(model)
    resize = crop_resize_size(crop, cfg.crop_resize)
    return lambda images: resize_and_crop(images, crop, resize)


def input_hw(model: nn.Module) -> tuple[int, int]:
    """(H, W) of the model's input (`data_config`), the size crops are cut to."""
    size = data_config(model)["input_size"]
    return int(size[-2]), int(size[-1])
