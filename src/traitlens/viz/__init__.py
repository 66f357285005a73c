"""Visualisation: overlays with honest colour scales, colour bars with numbers, legible grids, PNG export."""

from traitlens.viz.colorbar import add_colorbar, map_range, tick_label
from traitlens.viz.grids import (
    DISPLAY_WIDTH_PX,
    MIN_LABEL_PX,
    GridLayout,
    figure_png,
    grid_layout,
    head_grid,
    method_grid,
)
from traitlens.viz.overlay import SIGNED_CMAP, colorize, overlay, save_png, to_uint8_image

__all__ = ["DISPLAY_WIDTH_PX", "MIN_LABEL_PX", "SIGNED_CMAP", "GridLayout", "add_colorbar", "colorize",
           "figure_png", "grid_layout", "head_grid", "map_range", "method_grid", "overlay", "save_png",
           "tick_label", "to_uint8_image"]
