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

from traitlens.metrics._common import (
    average_ranks,
    boxes_to_masks,
    connected_components,
    image_generator,
    location_ranks,
    pearson,
    spearman,
    ssim,
)
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
from traitlens.metrics.localisation import (
    area_size,
    energy_pointing_game,
    mask_overlap,
    pointing_game,
    pxap,
    wsol,
)
from traitlens.metrics.robustness import infidelity, sensitivity_max
from traitlens.metrics.sanity import mprt, mprt_layers, randomize_parameters

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
    "effective_complexity",
    "energy_pointing_game",
    "get_metric",
    "gini",
    "image_generator",
    "infidelity",
    "insertion",
    "list_metrics",
    "location_ranks",
    "mask_overlap",
    "mprt",
    "mprt_layers",
    "near_zero_fraction",
    "noisy_linear_impute",
    "pairwise_class_similarity",
    "pearson",
    "pointing_game",
    "pxap",
    "random_logit",
    "randomize_parameters",
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
