"""Pure tensor operations shared by every layer: ROAD's noisy linear imputation, connected components and
their boxes, and mask dilation. Nothing here imports the rest of traitlens."""

from traitlens.ops.components import component_boxes, connected_components
from traitlens.ops.imputation import noisy_linear_impute
from traitlens.ops.morphology import dilate

__all__ = ["component_boxes", "connected_components", "dilate", "noisy_linear_impute"]
