"""Heatmap overlays: sequential colours for non-negative maps, diverging with 0 pinned at the centre for signed maps."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.colors import LinearSegmentedColormap
from PIL import Image

from traitlens._io import atomic_write

__all__ = ["SIGNED_CMAP", "colorize", "overlay", "save_png", "to_uint8_image"]

matplotlib.use("Agg")

#: CDAM's display colours (posthoc.md §1): negative #00E3FF→#4371AB, 0 black, positive #8B5A44→#FFA600.
SIGNED_CMAP = LinearSegmentedColormap.from_list(
    "traitlens_signed",
    [(0.0, "#00E3FF"), (0.499, "#4371AB"), (0.5, "#000000"), (0.501, "#8B5A44"), (1.0, "#FFA600")],
)
SEQUENTIAL_CMAP = matplotlib.colormaps["inferno"]


def _np(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)


def to_uint8_image(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """[3,H,W] or [H,W,3] floats in [0,1] (or uint8) → uint8 [H,W,3]."""
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return arr


def colorize(saliency: torch.Tensor | np.ndarray, signed: bool,
             clip: tuple[float, float] | None = None) -> np.ndarray:
    """Map [H,W] values to RGB floats [H,W,3].

    Signed maps are scaled by max|m| so 0 is always the centre (black) and a one-signed map uses one half.
    Non-negative maps are min-max scaled onto a sequential colormap. `clip` = per-map quantiles, display only.
    """
    m = _np(saliency)
    if clip is not None:
        lo, hi = np.quantile(m, clip[0]), np.quantile(m, clip[1])
        m = np.clip(m, lo, hi)
    if signed:
        scale = np.abs(m).max()
        unit = 0.5 + 0.5 * (m / scale if scale > 0 else np.zeros_like(m))
        return SIGNED_CMAP(unit)[..., :3]
    lo, hi = m.min(), m.max()
    unit = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    return SEQUENTIAL_CMAP(unit)[..., :3]


def overlay(image: torch.Tensor | np.ndarray, saliency: torch.Tensor | np.ndarray, signed: bool = False,
            alpha: float = 0.55, clip: tuple[float, float] | None = None) -> np.ndarray:
    """Blend a heatmap onto an image; returns uint8 [H,W,3]. The map is resized to the image if needed."""
    img = to_uint8_image(image).astype(np.float32) / 255.0
    m = _np(saliency)
    if m.shape != img.shape[:2]:
        m = torch.nn.functional.interpolate(torch.from_numpy(m)[None, None], size=img.shape[:2],
                                            mode="bilinear", align_corners=False)[0, 0].numpy()
    heat = colorize(m, signed, clip)
    return (np.clip((1 - alpha) * img + alpha * heat, 0, 1) * 255).round().astype(np.uint8)


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 [H,W,3] (or [H,W]) array as PNG, atomically."""
    return atomic_write(path, lambda p: Image.fromarray(array).save(p, format="PNG"))
