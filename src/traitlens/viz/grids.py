"""Figure grids: images × methods, and per-head maps, exported as PNG."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from traitlens._io import atomic_write
from traitlens.explain import Explanation
from traitlens.viz.overlay import colorize, overlay, to_uint8_image

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["figure_png", "head_grid", "method_grid"]


def figure_png(fig: Figure, path: str | Path | None = None, dpi: int = 110) -> bytes:
    """Render a figure to PNG bytes (and to `path` when given), then close it."""
    import matplotlib.pyplot as plt  # imported where figures are drawn, so importing traitlens stays light

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    data = buf.getvalue()
    if path is not None:
        atomic_write(path, lambda p: p.write_bytes(data))
    return data


def method_grid(
    images: torch.Tensor, explanations: Mapping[str, Explanation], target_index: int = 0,
    row_labels: Sequence[str] | None = None, path: str | Path | None = None,
) -> bytes:
    """Grid with one row per image and one column per method (plus the image); returns PNG bytes.

    Args:
        images: [B,3,H,W] in [0,1] (display space).
        explanations: method name → Explanation of these images.
        target_index: which of the K targets to show.
        row_labels: a caption per image row (e.g. the true class).
    """
    import matplotlib.pyplot as plt

    names = list(explanations)
    B = images.shape[0]
    fig, axes = plt.subplots(B, len(names) + 1, figsize=(1.8 * (len(names) + 1), 2.0 * B), squeeze=False)
    for b in range(B):
        targets = {str(e.target_names[b][target_index]) for e in explanations.values() if e.target_names is not None}
        shared = targets.pop() if len(targets) == 1 else None  # one explained class for the row: say it once
        label = row_labels[b] if row_labels else ""
        if shared is not None:
            label = f"{label}\nexplained: {shared}" if label else f"explained: {shared}"
        axes[b, 0].imshow(to_uint8_image(images[b]))
        axes[b, 0].set_ylabel(_wrap(label), fontsize=8)
        for j, name in enumerate(names, start=1):
            exp = explanations[name]
            axes[b, j].imshow(overlay(images[b], exp.maps[b, target_index], signed=exp.signed))
            if b == 0:
                axes[b, j].set_title(_wrap(name), fontsize=9)
            if exp.target_names is not None and shared is None:
                axes[b, j].set_xlabel(_wrap(str(exp.target_names[b][target_index])), fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return figure_png(fig, path)


def _wrap(text: str, width: int = 16) -> str:
    """Break long labels (class names like "red-head/plain/fan/spike") into lines of about `width` characters."""
    lines = []
    for line in text.split("\n"):
        while len(line) > width:
            cut = max(line.rfind(c, 0, width + 1) for c in "/ _")
            if cut <= 0:
                lines.append(line[:width])
                line = line[width:]
                continue
            keep = line[cut] != " "  # a break after "/" or "_" keeps it; a space is dropped
            lines.append(line[:cut + keep])
            line = line[cut + 1:]
        lines.append(line)
    return "\n".join(lines)


def head_grid(head_maps: torch.Tensor | np.ndarray, signed: bool = False, titles: Sequence[str] | None = None,
              path: str | Path | None = None, image: torch.Tensor | np.ndarray | None = None) -> bytes:
    """One panel per head from [R,h,w] maps, overlaid on `image` ([3,H,W] in [0,1]) when given; PNG bytes."""
    maps = head_maps.detach().cpu().numpy() if isinstance(head_maps, torch.Tensor) else np.asarray(head_maps)
    R = maps.shape[0]
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, R, figsize=(1.6 * R, 1.8), squeeze=False)
    for r in range(R):
        if image is None:
            axes[0, r].imshow(colorize(maps[r], signed), interpolation="nearest")
        else:
            axes[0, r].imshow(overlay(image, maps[r], signed=signed))
        axes[0, r].set_title(titles[r] if titles else f"head {r}", fontsize=9)
        axes[0, r].set_xticks([])
        axes[0, r].set_yticks([])
    return figure_png(fig, path)
