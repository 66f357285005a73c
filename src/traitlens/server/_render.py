"""Maps → PNG data URLs for the page: overlays at display size, per-head maps, all encoded in memory."""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from PIL import Image

from traitlens.viz.overlay import colorize, overlay

__all__ = ["display_image", "head_pngs", "overlay_png", "png_data_url"]


def png_data_url(array: np.ndarray) -> str:
    """uint8 [H,W,3] → `data:image/png;base64,...`."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def display_size(width: int, height: int, side: int) -> tuple[int, int]:
    """(W, H) with the longest side `side`, aspect kept."""
    scale = side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def display_image(image: Image.Image, side: int) -> np.ndarray:
    """The uploaded image at display size (its own aspect: the model's squash-resize is undone) as uint8 [H,W,3]."""
    size = display_size(image.width, image.height, side)
    resample = Image.Resampling.LANCZOS if size[0] < image.width else Image.Resampling.BICUBIC
    return np.asarray(image.resize(size, resample), dtype=np.uint8)


def overlay_png(image: np.ndarray, saliency: torch.Tensor, signed: bool) -> str:
    """Heatmap blended on the display image (the map is resized bilinearly to it), as a PNG data URL."""
    return png_data_url(overlay(image, saliency.float(), signed=signed))


def head_pngs(heads: torch.Tensor, signed: bool, side: int) -> list[str]:
    """Per-head maps [R,h,w] → R colourised PNG data URLs of longest side `side` (each scaled on its own)."""
    h, w = heads.shape[-2:]
    out_w, out_h = display_size(int(w), int(h), side)
    up = torch.nn.functional.interpolate(heads.float()[:, None], size=(out_h, out_w), mode="nearest")[:, 0]
    return [png_data_url((colorize(m, signed) * 255).round().astype(np.uint8)) for m in up]
