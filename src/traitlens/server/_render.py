"""Maps → PNG data URLs for the page: heat layers and overlays on one colour scale per request, in memory.

The viz layer (`traitlens.viz.overlay.colorize`) scales every map on its own, so two maps of one request could show
the same colour for different values. Here the scale is computed once over all maps of a request (`map_scale`) and
every map is coloured on it: the same colour is the same value across the top-k maps (and across the heads), and
the page can print the numbers of the colour bar. With one map the colours equal `colorize`'s.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from traitlens.viz.overlay import SEQUENTIAL_CMAP, SIGNED_CMAP

__all__ = ["ALPHA", "MapScale", "blend", "display_image", "display_size", "head_layers", "heat_rgb", "map_layers",
           "map_scale", "png_data_url", "resize_map", "to_uint8"]

#: Opacity of the heat layer in the blended overlays (the page's slider starts here).
ALPHA = 0.55


@dataclass(frozen=True)
class MapScale:
    """The colour scale of a set of maps: colours run from `lo` to `hi`; `vmin`/`vmax` are the values' own range.

    Signed maps are coloured on [−s, s] with s = max|value| (0 is black, the centre); non-negative maps on
    [vmin, vmax] (the sequential colour map's ends).
    """

    lo: float
    hi: float
    vmin: float
    vmax: float
    signed: bool


def map_scale(maps: torch.Tensor, signed: bool) -> MapScale:
    """The one colour scale of all of `maps` (any shape): see `MapScale`."""
    m = maps.detach().float()
    vmin, vmax = float(m.min()), float(m.max())
    if signed:
        s = max(abs(vmin), abs(vmax))
        return MapScale(-s, s, vmin, vmax, True)
    return MapScale(vmin, vmax, vmin, vmax, False)


def heat_rgb(values: np.ndarray, scale: MapScale) -> np.ndarray:
    """[H,W] values → RGB floats [H,W,3] on `scale` (a constant scale gives the colour of its low end, or 0)."""
    if scale.signed:
        unit = 0.5 + 0.5 * (values / scale.hi if scale.hi > 0 else np.zeros_like(values))
        return np.asarray(SIGNED_CMAP(np.clip(unit, 0.0, 1.0)))[..., :3]
    span = scale.hi - scale.lo
    unit = (values - scale.lo) / span if span > 0 else np.zeros_like(values)
    return np.asarray(SEQUENTIAL_CMAP(np.clip(unit, 0.0, 1.0)))[..., :3]


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """RGB floats in [0,1] → uint8."""
    return (np.clip(rgb, 0.0, 1.0) * 255).round().astype(np.uint8)


def blend(image: np.ndarray, heat: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """The heat layer (uint8 [H,W,3]) over the image (uint8 [H,W,3]) at opacity `alpha`, as `viz.overlay` blends."""
    out = (1 - alpha) * image.astype(np.float32) / 255.0 + alpha * heat.astype(np.float32) / 255.0
    return to_uint8(out)


def resize_map(saliency: torch.Tensor, height: int, width: int) -> np.ndarray:
    """[h,w] map → [height,width] float numpy, bilinear (as `viz.overlay` resizes a map onto its image)."""
    m = saliency.detach().float().cpu()
    if tuple(m.shape) != (height, width):
        m = torch.nn.functional.interpolate(m[None, None], size=(height, width), mode="bilinear",
                                            align_corners=False)[0, 0]
    return m.numpy()


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


def map_layers(shown: np.ndarray, saliency: torch.Tensor, scale: MapScale) -> tuple[str, str]:
    """(heat layer, blended overlay) PNG data URLs of one map on the display image `shown`."""
    heat = to_uint8(heat_rgb(resize_map(saliency, shown.shape[0], shown.shape[1]), scale))
    return png_data_url(heat), png_data_url(blend(shown, heat))


def head_layers(small: np.ndarray, heads: torch.Tensor, scale: MapScale) -> tuple[list[str], list[str]]:
    """Per-head maps [R,h,w] on the small display image: (heat layers, overlays), PNG data URLs, one scale."""
    heats, overlays = [], []
    for m in heads:
        heat, over = map_layers(small, m, scale)
        heats.append(heat)
        overlays.append(over)
    return heats, overlays
