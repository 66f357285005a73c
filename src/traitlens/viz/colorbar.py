"""Colour bars with numbers for saliency panels, on the same scale `colorize` uses.

`colorize` scales each map on its own: a signed map by max|m| (0 pinned at the centre, black), a non-negative map
min-max onto the sequential colours. `map_range` returns that scale so a bar under a panel reads in the map's own
units, and `add_colorbar` draws it with the numbers at its ends (and 0 in the middle of a signed bar).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from traitlens.viz.overlay import SEQUENTIAL_CMAP, SIGNED_CMAP

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colorbar import Colorbar
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure

__all__ = ["add_colorbar", "map_range", "tick_label"]


def map_range(saliency: torch.Tensor | np.ndarray, signed: bool) -> tuple[float, float]:
    """The (low, high) values `colorize` maps to the ends of its colour scale for this map.

    Signed: (−max|m|, +max|m|); non-negative: (min, max). A constant map gives low == high.
    """
    m = saliency.detach().float().cpu().numpy() if isinstance(saliency, torch.Tensor) else np.asarray(saliency)
    if signed:
        s = float(np.abs(m).max()) if m.size else 0.0
        return -s, s
    return (float(m.min()), float(m.max())) if m.size else (0.0, 0.0)


def tick_label(value: float) -> str:
    """Two significant digits, short exponents and a real minus sign: 0.0123 → "0.012", -1.5e-05 → "−1.5e−5"."""
    if value == 0:
        return "0"
    text = f"{value:.2g}"
    if "e" in text:
        mant, exp = text.split("e")
        text = f"{mant}e{int(exp)}"
    return text.replace("-", "−")


def add_colorbar(fig: Figure, cax: Axes, low: float, high: float, signed: bool, fontsize: float) -> Colorbar:
    """A horizontal colour bar drawn into `cax` with the map's numbers: low and high at its ends, 0 centred if signed.

    The end labels are aligned inwards so they stay inside the panel's width and never touch a neighbour's.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    cmap: Colormap
    if signed:
        s = max(abs(low), abs(high))
        vmin, vmax = (-s, s) if s > 0 else (-1.0, 1.0)
        cmap, ticks = SIGNED_CMAP, [vmin, 0.0, vmax]
        labels = [tick_label(-s), "0", tick_label(s)] if s > 0 else ["", "0", ""]
    else:
        vmin, vmax = low, high if high > low else low + 1.0
        cmap, ticks = SEQUENTIAL_CMAP, [vmin, vmax]
        labels = [tick_label(low), tick_label(high) if high > low else ""]
    norm = Normalize(vmin, vmax)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax, orientation="horizontal")
    bar.set_ticks(ticks, labels=labels)
    bar.ax.tick_params(labelsize=fontsize, length=2, pad=1)
    tick_texts = bar.ax.get_xticklabels()
    tick_texts[0].set_horizontalalignment("left")
    tick_texts[-1].set_horizontalalignment("right")
    bar.outline.set_linewidth(0.5)
    return bar
