"""Evaluation metrics for explanations (metrics.md), one module per family, behind one registry.

Every metric takes the model, the images (in the model's input space) and an `Explanation` (or a raw map
tensor), returns `MetricResult`s with per-sample values [B,K], a dataset-level aggregate and the knobs it ran
with, and declares in the registry its direction (higher / lower is better), what it needs and what it costs.

Example:
    >>> import traitlens as tl
    >>> from traitlens.metrics import deletion, list_metrics
    >>> exp = tl.explain(model, x, method="cdam")  # doctest: +SKIP
    >>> deletion(model, x, exp).value  # doctest: +SKIP
    >>> [m.name for m in list_metrics(category="localisation")]  # doctest: +SKIP
"""

from traitlens.metrics._registry import (
    MetricInfo,
    MetricInputs,
    MetricResult,
    get_metric,
    list_metrics,
    register_metric,
    resolve_metrics,
)
from traitlens.metrics.complexity import complexity, effective_complexity, gini, near_zero_fraction
from traitlens.metrics.discriminative import (
    class_sensitivity,
    pairwise_class_similarity,
    random_logit,
    trait_precision,
)
from traitlens.metrics.faithfulness import (
    abpc,
    aopc,
    aopc_lerf,
    aopc_morf,
    chefer_perturbation,
    deletion,
    insertion,
    noisy_linear_impute,
    road,
    tam_agreement,
)
from traitlens.metrics.inputs import image_generator, logits_of, predict, raw_pixel_maps
from traitlens.metrics.localisation import (
    area_size,
    energy_pointing_game,
    energy_share,
    mask_overlap,
    pointing_game,
    pxap,
    wsol,
)
from traitlens.metrics.masks import boxes_to_masks
from traitlens.metrics.ranking import location_ranks
from traitlens.metrics.robustness import infidelity, sensitivity_max
from traitlens.metrics.sanity import mprt, mprt_layers, randomize_parameters
from traitlens.metrics.stats import average_ranks, pearson, spearman, ssim
from traitlens.ops.components import connected_components
from traitlens.ops.morphology import dilate

__all__ = [
    "MetricInfo",
    "MetricInputs",
    "MetricResult",
    "abpc",
    "aopc",
    "aopc_lerf",
    "aopc_morf",
    "area_size",
    "average_ranks",
    "boxes_to_masks",
    "chefer_perturbation",
    "class_sensitivity",
    "complexity",
    "connected_components",
    "deletion",
    "dilate",
    "effective_complexity",
    "energy_pointing_game",
    "energy_share",
    "get_metric",
    "gini",
    "image_generator",
    "infidelity",
    "insertion",
    "list_metrics",
    "location_ranks",
    "logits_of",
    "mask_overlap",
    "mprt",
    "mprt_layers",
    "near_zero_fraction",
    "noisy_linear_impute",
    "pairwise_class_similarity",
    "pearson",
    "pointing_game",
    "predict",
    "pxap",
    "random_logit",
    "randomize_parameters",
    "raw_pixel_maps",
    "register_metric",
    "resolve_metrics",
    "road",
    "sensitivity_max",
    "spearman",
    "ssim",
    "tam_agreement",
    "trait_precision",
    "wsol",
]
