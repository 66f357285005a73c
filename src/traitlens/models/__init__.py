"""Interpretable-by-design classifiers whose forward pass produces the class evidence (models.md).

`PromptCAM`, `INTR` and `SCOUTER` return logits from `forward` (timm's convention) and `ModelOutput(logits,
maps, aux)` from `forward_maps`; `explain(net, x, method="native")` reads their maps. Each model file registers
its kind (`register_model_kind`: the `load_model` builder and the training recipes); importing this package
also registers the "native" explanation method.
"""

from traitlens.models.base import InterpretableModel, LogitsOnly
from traitlens.models.head_ranking import HeadRanking, rank_heads
from traitlens.models.intr import INTR, similar_class_targets
from traitlens.models.native import NativeMaps
from traitlens.models.outputs import ModelOutput, Prediction
from traitlens.models.prompt_checkpoint import load_prompts, save_prompts
from traitlens.models.promptcam import PromptCAM
from traitlens.models.registry import (
    KINDS,
    ModelKind,
    RecipeVariant,
    build_interpretable,
    get_model_kind,
    list_model_kinds,
    recommended_fit_config,
    recommended_model_options,
    register_model_kind,
)
from traitlens.models.scouter import SCOUTER, area_size, least_similar_class, normalize_class_maps
from traitlens.models.trait_removal import TraitRemoval, top_fraction_region, trait_head_matrix, trait_removal

__all__ = [
    "INTR",
    "KINDS",
    "RECIPE_NOTES",
    "SCOUTER",
    "HeadRanking",
    "InterpretableModel",
    "LogitsOnly",
    "ModelKind",
    "ModelOutput",
    "NativeMaps",
    "Prediction",
    "PromptCAM",
    "RecipeVariant",
    "TraitRemoval",
    "area_size",
    "build_interpretable",
    "get_model_kind",
    "least_similar_class",
    "list_model_kinds",
    "load_prompts",
    "normalize_class_maps",
    "rank_heads",
    "recommended_fit_config",
    "recommended_model_options",
    "register_model_kind",
    "save_prompts",
    "similar_class_targets",
    "top_fraction_region",
    "trait_head_matrix",
    "trait_removal",
]

#: What each kind's reference did that its traitlens reference recipe does not (docs/recipes.md).
RECIPE_NOTES: dict[str, list[str]] = {k.name: list(k.notes) for k in list_model_kinds()}
