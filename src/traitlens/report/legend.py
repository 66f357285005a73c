"""The leaderboard as a reader sees it: a legend for every column, the colour of each map's source, and a bar
chart drawn at the report's width with legible text and its colour key inside.

Column directions are those `traitlens.evaluation.COLUMNS` declares (metrics.md §1.1 for deletion/insertion);
`leaderboard_legend` refuses a column it has no words for, so a new column cannot reach the report unexplained.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from traitlens.evaluation import COLUMNS, OTHER_SOURCE_COLOUR, SOURCE_COLOURS
from traitlens.viz import DISPLAY_WIDTH_PX, figure_png

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["COLUMN_LEGEND", "SOURCE_COLOURS", "SOURCE_LEGEND", "leaderboard_figure", "leaderboard_figure_artist",
           "leaderboard_legend"]

#: What each source means, for the colour key.
SOURCE_LEGEND: dict[str, str] = {
    "traitlens": "post-hoc map computed by traitlens",
    "native": "a by-design model's own map (Prompt-CAM / INTR / SCOUTER)",
    "pytorch-grad-cam": "the same kind of map from the pytorch-grad-cam library (a cross-check)",
    "captum": "the same kind of map from the captum library (a cross-check)",
}

#: Column → (what it measures, which way is better: "higher", "lower", or "" for a description).
COLUMN_LEGEND: dict[str, tuple[str, str]] = {
    "method": ("the explanation method; pgc:/captum: rows are peer libraries' versions, NAME:native rows a "
               "by-design model's own map", ""),
    "model": ("the classifier whose prediction the map explains", ""),
    "model accuracy": ("that classifier's test accuracy: maps of a weak model explain a weak model", "higher"),
    "model acc": ("that classifier's test accuracy: maps of a weak model explain a weak model", "higher"),
    "source": ("who computed the map; also the colour of its bars in the chart", ""),
    "trait_pg": ("pointing game: how often the map's peak falls on the trait that tells the class from its "
                 "sibling (within a small tolerance)", "higher"),
    "trait_energy": ("share of the map's positive evidence inside that trait", "higher"),
    "trait_iou": ("overlap (IoU) of the map's top pixels, as many as the trait has, with the trait", "higher"),
    "contrast_energy": ("share of the 'why this class, not its sibling' evidence inside the trait", "higher"),
    "object_energy": ("share of positive evidence on the whole critter (finds the object, not the trait)",
                      "higher"),
    "deletion": ("class probability as the most salient pixels are removed first, averaged over the curve (AUC): "
                 "a faithful map makes it drop fast", "lower"),
    "insertion": ("class probability as the most salient pixels are put back into a blurred image (AUC): a faithful "
                  "map makes it rise fast", "higher"),
    "ins_minus_del": ("insertion − deletion: both faithfulness curves in one number", "higher"),
    "s_per_img": ("seconds to compute one map on this machine (cost, not quality)", "lower"),
}


def leaderboard_legend(header: Sequence[str]) -> list[list[str]]:
    """Rows [column, what it measures, better] for every column of a leaderboard table, in `header` order.

    Raises:
        KeyError: a column has no entry in `COLUMN_LEGEND` (a table must not carry an unexplained column).
    """
    rows = []
    for col in header:
        name = col.rstrip(" ↑↓")
        if name not in COLUMN_LEGEND:
            raise KeyError(f"no legend for leaderboard column '{name}': add it to COLUMN_LEGEND")
        meaning, direction = COLUMN_LEGEND[name]
        rows.append([name, meaning, {"higher": "higher\u00a0↑", "lower": "lower\u00a0↓", "": "–"}[direction]])
    return rows


def _panels(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return [c for c in ("trait_energy", "trait_pg", "ins_minus_del") if rows and c in rows[0]]


def leaderboard_figure_artist(rows: Sequence[Mapping[str, Any]], width_px: int = DISPLAY_WIDTH_PX, dpi: int = 100,
                              label_px: float = 12.0) -> Figure:
    """The matplotlib figure of `leaderboard_figure` (for tests that measure its text)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    panels = _panels(rows)
    if not panels:
        raise ValueError("leaderboard rows carry none of trait_energy, trait_pg, ins_minus_del")
    pt = label_px * 72.0 / dpi
    row_px = 1.6 * label_px
    height_px = len(rows) * row_px + 7 * label_px
    fig, axes = plt.subplots(1, len(panels), figsize=(width_px / dpi, height_px / dpi), dpi=dpi, sharey=True,
                             squeeze=False, layout="constrained")
    names = [str(r["method"]) for r in rows]
    colours = [SOURCE_COLOURS.get(str(r.get("source")), OTHER_SOURCE_COLOUR) for r in rows]
    for ax, col in zip(axes[0], panels, strict=False):
        vals = np.array([np.nan_to_num(float(r[col]), nan=0.0) for r in rows])
        lo, hi = [], []
        for v, r in zip(vals, rows, strict=True):
            ci = r.get(f"{col}_ci")
            if ci is None or any(math.isnan(float(c)) for c in ci):
                lo.append(0.0)
                hi.append(0.0)
            else:
                lo.append(max(v - float(ci[0]), 0.0))
                hi.append(max(float(ci[1]) - v, 0.0))
        ax.barh(range(len(rows)), vals, xerr=[lo, hi], capsize=2, color=colours, error_kw={"linewidth": 0.8})
        ax.set_yticks(range(len(rows)), names)
        arrow = "↓" if COLUMNS[col][1] == "lower" else "↑"
        ax.set_title(f"{col} {arrow} (bars: 95 % CI)", fontsize=pt)
        ax.tick_params(labelsize=pt)
        ax.grid(axis="x", linewidth=0.4, alpha=0.5)
    axes[0, 0].invert_yaxis()  # best row on top (the axes share y)
    present = [s for s in SOURCE_COLOURS if any(r.get("source") == s for r in rows)]
    handles = [Patch(color=SOURCE_COLOURS[s], label=s) for s in present]
    fig.legend(handles=handles, loc="outside upper center", ncols=max(1, len(handles)), fontsize=pt, frameon=False,
               title="colour = source of the map", title_fontsize=pt)
    return fig


def leaderboard_figure(rows: Sequence[Mapping[str, Any]], width_px: int = DISPLAY_WIDTH_PX) -> bytes:
    """Bars of trait_energy, trait_pg and insertion − deletion per row with 95 % CIs, coloured by source; PNG.

    Drawn `width_px` wide with 12 px text, so it reads at 1:1 in the report.
    """
    return figure_png(leaderboard_figure_artist(rows, width_px), dpi=100, tight=False)
