"""Visualisation: overlays with honest colour scales, grids, PNG export."""

from traitlens.viz.grids import figure_png, head_grid, method_grid
from traitlens.viz.overlay import SIGNED_CMAP, colorize, overlay, save_png, to_uint8_image

__all__ = ["SIGNED_CMAP", "colorize", "figure_png", "head_grid", "method_grid", "overlay", "save_png",
           "to_uint8_image"]
