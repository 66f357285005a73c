"""Interpretable-by-design classifiers whose forward pass produces the class evidence (models.md).

`PromptCAM`, `INTR` and `SCOUTER` return `ModelOutput(logits, maps, aux)`; `explain(net, x, method="native")`
reads their maps. Importing this package registers their builders (so `load_model(dir)` rebuilds saved
models) and the "native" explanation method.
"""

from traitlens.models._common import InterpretableModel, LogitsOnly, ModelOutput, Prediction
from traitlens.models.intr import INTR, similar_class_targets
from traitlens.models.native import NativeMaps
from traitlens.models.promptcam import (
    HeadRanking,
    PromptCAM,
    TraitRemoval,
    rank_heads,
    top_fraction_region,
    trait_head_matrix,
    trait_removal,
)
from traitlens.models.scouter import SCOUTER, area_size, least_similar_class, normalize_class_maps
from traitlens.models.train_cli import KINDS, build_interpretable, recommended_fit_config

__all__ = [
    "INTR",
    "KINDS",
    "SCOUTER",
    "HeadRanking",
    "InterpretableModel",
    "LogitsOnly",
    "ModelOutput",
    "NativeMaps",
    "Prediction",
    "PromptCAM",
    "TraitRemoval",
    "area_size",
    "build_interpretable",
    "least_similar_class",
    "normalize_class_maps",
    "rank_heads",
    "recommended_fit_config",
    "similar_class_targets",
    "top_fraction_region",
    "trait_head_matrix",
    "trait_removal",
]
