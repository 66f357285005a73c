"""Turn image files into model inputs with the model's own mean/std, with clear errors for bad files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image, UnidentifiedImageError
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from traitlens.data.images import MAX_PIXELS, PixelLimitError, decode_image

__all__ = ["MAX_IMAGE_PIXELS", "ImageLoadError", "data_config", "load_image", "load_images", "normalize",
           "unnormalize"]

#: Default cap on width × height for `load_image`, checked from the header before decoding (PIL's global
#: `Image.MAX_IMAGE_PIXELS` is left as it is).
MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageLoadError(ValueError):
    """An image file is missing, corrupt, too large, or not an image; the message names the file."""


def data_config(model: nn.Module) -> dict:
    """Mean, std and input size the model expects (timm `pretrained_cfg`, ImageNet defaults otherwise)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    input_size = cfg.get("input_size")
    # A ViT built with an img_size override keeps its architecture's pretrained_cfg (224 px): trust the model.
    img = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img is not None:
        input_size = (3, *img) if isinstance(img, (tuple, list)) else (3, img, img)
    return {
        "mean": tuple(cfg.get("mean", IMAGENET_DEFAULT_MEAN)),
        "std": tuple(cfg.get("std", IMAGENET_DEFAULT_STD)),
        "input_size": tuple(input_size) if input_size is not None else (3, 224, 224),
    }


def normalize(model: nn.Module, images01: torch.Tensor) -> torch.Tensor:
    """Map images in [0, 1] ([B,3,H,W]) to the model's input space."""
    cfg = data_config(model)
    mean = torch.tensor(cfg["mean"], dtype=images01.dtype, device=images01.device).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"], dtype=images01.dtype, device=images01.device).view(1, -1, 1, 1)
    return (images01 - mean) / std


def unnormalize(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Inverse of `normalize`, clamped to [0, 1] for display."""
    cfg = data_config(model)
    mean = torch.tensor(cfg["mean"], dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"], dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * std + mean).clamp(0, 1)


def load_image(
    path: str | Path, size: int | tuple[int, int] | None = None, *, max_pixels: int | None = MAX_IMAGE_PIXELS
) -> torch.Tensor:
    """Read an image file as float [3,H,W] in [0,1], EXIF orientation applied, squash-resized to `size` (H, W).

    Decoded by `traitlens.data.images.decode_image`, the decoder the datasets and the server use too (16-bit
    files keep their high byte). Images with more than `max_pixels` pixels are refused from the header, before
    any pixel is decoded; None lifts the cap (PIL's own guard still applies).

    Raises:
        ImageLoadError: the file is missing, not an image, truncated, or too large.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"image not found: {path}")
    try:
        rgb = decode_image(path, max_pixels=max_pixels)
    except PixelLimitError as err:
        raise ImageLoadError(f"{path}: image too large: {err}") from err
    except Image.DecompressionBombError as err:
        raise ImageLoadError(f"{path}: image too large ({err})") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"cannot read image {path}: {err}") from err
    return pil_to_tensor(rgb, size)


def pil_to_tensor(img: Image.Image, size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """PIL RGB image → float [3,H,W] in [0,1], bicubic squash-resize to `size` when given."""
    if size is not None:
        h, w = (size, size) if isinstance(size, int) else size
        img = img.resize((w, h), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def load_images(
    paths: Sequence[str | Path], model: nn.Module | None = None, size: int | tuple[int, int] | None = None,
    *, max_pixels: int | None = MAX_IMAGE_PIXELS,
) -> torch.Tensor:
    """Load several files into one [B,3,H,W] batch in [0,1], resized to `size` or the model's input size.

    Each file is read by `load_image` (same `max_pixels` cap); raises `ImageLoadError` naming the bad file.
    """
    if size is None and model is not None:
        size = tuple(data_config(model)["input_size"][1:])
    if size is None:
        raise ValueError("load_images needs a size or a model to read the input size from")
    return torch.stack([load_image(p, size, max_pixels=max_pixels) for p in paths])
