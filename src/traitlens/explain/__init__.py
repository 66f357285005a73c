"""Post-hoc explanation methods, one file each, behind one registry and one `explain` entry point.

New methods subclass `Explainer` (or `GradientExplainer`) and register with `@register_method`.
"""

import importlib
import pkgutil

from traitlens.explain._amp import AmpUnsafeMethodError, amp_refusal, amp_safe_methods
from traitlens.explain._base import Explainer
from traitlens.explain._compat import (
    FAMILIES,
    IncompatibleMethodError,
    method_refusal,
    model_families,
    supported_methods,
)
from traitlens.explain._concept import Concept, ConceptLoadError
from traitlens.explain._explanation import Attribution, Explanation
from traitlens.explain._gradient_explainer import ChunkMaps, GradientChunk, GradientExplainer
from traitlens.explain._postprocess import normalize_maps, upsample_maps
from traitlens.explain._registry import MethodInfo, get_method, list_methods, register_method
from traitlens.explain._targets import TargetSpec, parse_target_text, score_space, target_scores
from traitlens.explain.api import explain

# Every public module in this package is one method that registers itself on import.
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "api":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "FAMILIES",
    "AmpUnsafeMethodError",
    "Attribution",
    "ChunkMaps",
    "Concept",
    "ConceptLoadError",
    "Explainer",
    "Explanation",
    "GradientChunk",
    "GradientExplainer",
    "IncompatibleMethodError",
    "MethodInfo",
    "TargetSpec",
    "amp_refusal",
    "amp_safe_methods",
    "explain",
    "get_method",
    "list_methods",
    "method_refusal",
    "model_families",
    "normalize_maps",
    "parse_target_text",
    "register_method",
    "score_space",
    "supported_methods",
    "target_scores",
    "upsample_maps",
]
