"""Figure grids: images × methods, and per-head maps, exported as PNG, legible where they are shown.

Each grid is drawn at the width it is displayed at (`DISPLAY_WIDTH_PX`, the HTML report's content width) so one
PNG pixel is one CSS pixel and a font size in points is `pt · dpi / 72` pixels on screen; `GridLayout` holds that
arithmetic and `method_grid` wraps many methods into bands of a few columns rather than shrinking the labels.
Every map panel carries a colour bar with its own numbers (`traitlens.viz.colorbar`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from traitlens._io import atomic_write
from traitlens.explain import Explanation
from traitlens.viz.colorbar import add_colorbar, map_range
from traitlens.viz.overlay import colorize, overlay, to_uint8_image

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["DISPLAY_WIDTH_PX", "MIN_LABEL_PX", "GridLayout", "figure_png", "grid_layout", "head_grid",
           "method_grid"]

#: The width (CSS px) report figures are drawn for: the HTML report's content width.
DISPLAY_WIDTH_PX = 1100
#: The smallest text (px on screen) a figure may carry when shown at its displayed width.
MIN_LABEL_PX = 11.0


@dataclass(frozen=True)
class GridLayout:
    """Size arithmetic of a grid figure: `width_px` wide at `dpi`, text `font_pt`, `columns` panels per band.

    Attributes:
        columns: panels per row (the image column included for `method_grid`).
        bands: how many blocks of rows the panels are wrapped into.
        width_px: the PNG's width (figure inches × dpi).
        dpi: dots per inch the figure is rendered at.
        font_pt: the size of every label, tick and title.
        panel_px: the width of one panel's cell in PNG pixels.
    """

    columns: int
    bands: int
    width_px: int
    dpi: int
    font_pt: float
    panel_px: int

    def font_px(self, displayed_width_px: float = DISPLAY_WIDTH_PX) -> float:
        """The text height in screen px when the PNG is shown `displayed_width_px` wide (never enlarged)."""
        scale = min(1.0, displayed_width_px / self.width_px)
        return self.font_pt * self.dpi / 72.0 * scale


def grid_layout(n_panels: int, *, width_px: int = DISPLAY_WIDTH_PX, panel_px: int = 175, label_px: float = 12.0,
                dpi: int = 100, lead_columns: int = 0) -> GridLayout:
    """Columns, bands and font size so that `n_panels` panels of about `panel_px` fit `width_px` with text of
    `label_px` screen pixels (≥ `MIN_LABEL_PX`); a grid with fewer columns than fit is narrower than `width_px`.

    Args:
        n_panels: map panels to place.
        width_px: the displayed (and drawn) width.
        panel_px: the target width of one panel cell; fewer columns when the width holds fewer.
        label_px: text height on screen.
        dpi: render resolution; the font size in points follows from it.
        lead_columns: columns repeated at the start of every band (the image column of `method_grid`).
    """
    if n_panels < 1:
        raise ValueError(f"a grid needs at least one panel, got {n_panels}")
    if label_px < MIN_LABEL_PX:
        raise ValueError(f"label_px must be ≥ {MIN_LABEL_PX} px to stay legible, got {label_px}")
    fit = max(lead_columns + 1, width_px // panel_px)
    per_band = fit - lead_columns
    bands = math.ceil(n_panels / per_band)
    per_band = math.ceil(n_panels / bands)  # balance the bands: 17 methods in 5-wide bands → 5, 4, 4, 4
    columns = per_band + lead_columns
    if columns * panel_px < width_px:  # a few panels keep their size rather than stretch over the whole width
        width_px = columns * panel_px
    return GridLayout(columns=columns, bands=bands, width_px=width_px, dpi=dpi, font_pt=label_px * 72.0 / dpi,
                      panel_px=width_px // columns)


def figure_png(fig: Figure, path: str | Path | None = None, dpi: int = 110, tight: bool = True) -> bytes:
    """Render a figure to PNG bytes (and to `path` when given), then close it.

    `tight` crops the figure to its drawn content (`bbox_inches="tight"`); layouts drawn to an exact width
    (`GridLayout`) pass False so the PNG is exactly figure width × dpi.
    """
    import matplotlib.pyplot as plt  # imported where figures are drawn, so importing traitlens stays light

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    plt.close(fig)
    data = buf.getvalue()
    if path is not None:
        atomic_write(path, lambda p: p.write_bytes(data))
    return data


class _Canvas:
    """A figure `width_px` × `height_px` at `dpi` on which axes and text are placed in pixels from the top left.

    An explicit layout (rather than tight/constrained layout) keeps the PNG exactly `width_px` wide, so the
    report shows it at 1:1 and the font arithmetic of `GridLayout` holds on screen.
    """

    def __init__(self, width_px: float, height_px: float, dpi: int) -> None:
        import matplotlib.pyplot as plt

        self.w, self.h = float(width_px), float(height_px)
        self.fig = plt.figure(figsize=(self.w / dpi, self.h / dpi), dpi=dpi)

    def axes(self, x: float, y: float, w: float, h: float) -> Axes:
        ax = self.fig.add_axes((x / self.w, 1 - (y + h) / self.h, w / self.w, h / self.h))
        ax.set_xticks([])
        ax.set_yticks([])
        return ax

    def text(self, x: float, y: float, text: str, fontsize: float, ha: str = "left", va: str = "top") -> None:
        self.fig.text(x / self.w, 1 - y / self.h, text, fontsize=fontsize, ha=ha, va=va)


def _map_panel(canvas: _Canvas, x: float, y: float, size: float, image: torch.Tensor | np.ndarray | None,
               saliency: torch.Tensor | np.ndarray, signed: bool, font_pt: float, colorbar: bool) -> None:
    """One map (overlaid on `image` when given) at (x, y), `size` px square, with its colour bar underneath."""
    ax = canvas.axes(x, y, size, size)
    if image is None:
        ax.imshow(colorize(saliency, signed), interpolation="nearest", aspect="auto")
    else:
        ax.imshow(overlay(image, saliency, signed=signed), aspect="auto")
    if colorbar:
        cax = canvas.axes(x, y + size + _BAR_GAP_PX, size, _BAR_PX)
        add_colorbar(canvas.fig, cax, *map_range(saliency, signed), signed=signed, fontsize=font_pt)


_GAP_PX = 10  # between panels
_BAND_GAP_PX = 14  # extra space above each band after the first
_BAR_GAP_PX = 3  # panel to its colour bar
_BAR_PX = 8  # colour bar thickness
_LINE = 1.3  # line height in font sizes


def _bar_px(font_px: float) -> float:
    """Height a colour bar and its numbers take under a panel."""
    return _BAR_GAP_PX + _BAR_PX + 2 + _LINE * font_px


def _lines(text: str) -> int:
    return text.count("\n") + 1 if text else 0


def method_grid_figure(
    images: torch.Tensor, explanations: Mapping[str, Explanation], target_index: int = 0,
    row_labels: Sequence[str] | None = None, *, width_px: int = DISPLAY_WIDTH_PX, colorbars: bool = True,
) -> tuple[Figure, GridLayout]:
    """The matplotlib figure of `method_grid` and its layout (for tests that measure its text)."""
    names = list(explanations)
    if not names:
        raise ValueError("method_grid needs at least one explanation")
    B = images.shape[0]
    lay = grid_layout(len(names), width_px=width_px, lead_columns=1)
    f = lay.font_pt * lay.dpi / 72.0
    size = lay.panel_px - _GAP_PX
    chars = _chars_per_line(size, f)
    shared = []
    for b in range(B):  # one explained class for the row: say it once, under the image
        targets = {str(e.target_names[b][target_index]) for e in explanations.values() if e.target_names is not None}
        shared.append(targets.pop() if len(targets) == 1 else None)
    captions = []
    for b in range(B):
        lines = [f"true: {row_labels[b]}"] if row_labels else []
        lines += [f"explained: {shared[b]}"] if shared[b] is not None else []
        captions.append(_wrap("\n".join(lines), chars))
    under = {(b, n): _wrap(str(explanations[n].target_names[b][target_index]), chars)  # type: ignore[index]
             for b in range(B) for n in names if shared[b] is None and explanations[n].target_names is not None}
    titles = {n: _wrap(n, chars) for n in names}
    sizes = [len(names) // lay.bands + (i < len(names) % lay.bands) for i in range(lay.bands)]
    starts = np.cumsum([0, *sizes]).tolist()
    bands = [names[starts[i]:starts[i + 1]] for i in range(lay.bands)]

    def below(b: int, band: list[str]) -> float:
        maps = (_bar_px(f) if colorbars else 0) + max([_lines(under.get((b, n), "")) for n in band] + [0]) * _LINE * f
        return max(maps, _lines(captions[b]) * _LINE * f + 3)

    def band_height(band: list[str]) -> float:
        title = max(_lines(titles[n]) for n in band) * _LINE * f + 4 + _BAND_GAP_PX
        return title + sum(size + below(b, band) + _GAP_PX for b in range(B))

    canvas = _Canvas(lay.width_px, sum(band_height(band) for band in bands) + _GAP_PX - _BAND_GAP_PX, lay.dpi)
    y = _GAP_PX / 2 - _BAND_GAP_PX
    for band in bands:
        y += max(_lines(titles[n]) for n in band) * _LINE * f + 4 + _BAND_GAP_PX
        for b in range(B):
            x = _GAP_PX / 2
            ax = canvas.axes(x, y, size, size)
            ax.imshow(to_uint8_image(images[b]), aspect="auto")
            if b == 0:
                canvas.text(x + size / 2, y - 3, "image", lay.font_pt, ha="center", va="bottom")
            canvas.text(x, y + size + 3, captions[b], lay.font_pt)
            for j, name in enumerate(band, start=1):
                x = j * lay.panel_px + _GAP_PX / 2
                exp = explanations[name]
                _map_panel(canvas, x, y, size, images[b], exp.maps[b, target_index], exp.signed, lay.font_pt,
                           colorbars)
                if b == 0:
                    canvas.text(x + size / 2, y - 3, titles[name], lay.font_pt, ha="center", va="bottom")
                if (b, name) in under:
                    canvas.text(x + size / 2, y + size + (_bar_px(f) if colorbars else 3), under[(b, name)],
                                lay.font_pt, ha="center")
            y += size + below(b, band) + _GAP_PX
    return canvas.fig, lay


def method_grid(
    images: torch.Tensor, explanations: Mapping[str, Explanation], target_index: int = 0,
    row_labels: Sequence[str] | None = None, path: str | Path | None = None, *,
    width_px: int = DISPLAY_WIDTH_PX, colorbars: bool = True,
) -> bytes:
    """Grid with one row per image and one column per method (plus the image); returns PNG bytes.

    Drawn `width_px` wide (the report's width) with text of at least `MIN_LABEL_PX` screen px; more methods than
    fit side by side wrap into further bands of rows, each starting with the image again.

    Args:
        images: [B,3,H,W] in [0,1] (display space).
        explanations: method name → Explanation of these images.
        target_index: which of the K targets to show.
        row_labels: a caption per image row (e.g. the true class).
        path: also write the PNG there.
        width_px: the width the PNG is drawn for and shown at.
        colorbars: a colour bar with numbers under every map (the map's own scale, as `colorize` draws it).
    """
    fig, lay = method_grid_figure(images, explanations, target_index, row_labels, width_px=width_px,
                                  colorbars=colorbars)
    return figure_png(fig, path, dpi=lay.dpi, tight=False)


def _chars_per_line(width_px: float, font_px: float) -> int:
    """About how many characters fit `width_px` (DejaVu Sans averages ~0.6 em a character, with margin)."""
    return max(8, int(width_px / (0.62 * font_px)))


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


def head_grid_figure(head_maps: torch.Tensor | np.ndarray, signed: bool = False,
                     titles: Sequence[str] | None = None, image: torch.Tensor | np.ndarray | None = None, *,
                     colorbars: bool = True) -> tuple[Figure, GridLayout]:
    """The matplotlib figure of `head_grid` and its layout."""
    maps = head_maps.detach().cpu().numpy() if isinstance(head_maps, torch.Tensor) else np.asarray(head_maps)
    R = maps.shape[0]
    lay = grid_layout(R, panel_px=150)
    f = lay.font_pt * lay.dpi / 72.0
    size = lay.panel_px - _GAP_PX
    names = [_wrap(titles[r] if titles else f"head {r}", _chars_per_line(size, f)) for r in range(R)]
    title_px = max(_lines(n) for n in names) * _LINE * f + 4
    row_px = title_px + size + (_bar_px(f) if colorbars else 0) + _GAP_PX
    canvas = _Canvas(lay.width_px, lay.bands * row_px + _GAP_PX / 2, lay.dpi)
    for r in range(R):
        x = (r % lay.columns) * lay.panel_px + _GAP_PX / 2
        y = (r // lay.columns) * row_px + _GAP_PX / 2 + title_px
        _map_panel(canvas, x, y, size, image, maps[r], signed, lay.font_pt, colorbars)
        canvas.text(x + size / 2, y - 3, names[r], lay.font_pt, ha="center", va="bottom")
    return canvas.fig, lay


def head_grid(head_maps: torch.Tensor | np.ndarray, signed: bool = False, titles: Sequence[str] | None = None,
              path: str | Path | None = None, image: torch.Tensor | np.ndarray | None = None, *,
              colorbars: bool = True) -> bytes:
    """One panel per head from [R,h,w] maps, overlaid on `image` ([3,H,W] in [0,1]) when given; PNG bytes.

    Each panel has a colour bar with its numbers; many heads wrap into rows of at most the report's width.
    """
    fig, lay = head_grid_figure(head_maps, signed, titles, image, colorbars=colorbars)
    return figure_png(fig, path, dpi=lay.dpi, tight=False)
