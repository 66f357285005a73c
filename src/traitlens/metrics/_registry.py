"""One registry of evaluation metrics, read by `evaluate`, the leaderboard and the CLI (metrics.md §0, §7).

Each metric declares its direction per output ("higher" / "lower" is better, or "none" for report-only
quantities), its category, what it needs (model, labels, boxes, masks, part masks, explainer) and its cost,
like Quantus's `score_direction` but torch-native. Every call returns `MetricResult`s that record the knobs
they ran with, per-sample values [B,K] and, where a metric is defined at dataset level (PxAP, MaxBoxAccV2,
macro pointing game, pooled Pearson), the per-sample statistics its aggregate needs, so results of shards and
batches concatenate and bootstrap over images.
"""

from __future__ import annotations

import fnmatch
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

import torch

__all__ = [
    "AGGREGATORS",
    "DIRECTIONS",
    "NEEDS",
    "MetricInfo",
    "MetricInputs",
    "MetricResult",
    "get_metric",
    "knob_record",
    "list_metrics",
    "register_metric",
    "resolve_metrics",
]

DIRECTIONS = ("higher", "lower", "none")
NEEDS = frozenset({"model", "labels", "boxes", "masks", "part_masks", "trait_masks", "explainer"})
CATEGORIES = ("faithfulness", "robustness", "localisation", "complexity", "sanity", "discriminative")


# ----------------------------------------------------------------------------- aggregation


def _nanmean(values: torch.Tensor) -> float:
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else math.nan


AGGREGATORS: dict[str, Callable[[MetricResult], float]] = {"mean": lambda r: _nanmean(r.values)}
"""Dataset-level aggregates by name (names, not functions, keep `MetricResult` picklable for caches and gloo)."""


def register_aggregator(name: str) -> Callable[[Callable[[MetricResult], float]], Callable[[MetricResult], float]]:
    """Decorator: a dataset-level aggregate computed from a (concatenated) `MetricResult`."""

    def deco(fn: Callable[[MetricResult], float]) -> Callable[[MetricResult], float]:
        AGGREGATORS[name] = fn
        return fn

    return deco


@dataclass
class MetricResult:
    """What one metric output measured on a batch (or, concatenated, on a dataset).

    Attributes:
        name: output name, e.g. "deletion" or "road_morf".
        values: float64 [B,K] per (image, target); NaN where undefined (degenerate map, empty mask, ...).
        direction: "higher" | "lower" | "none" (report only).
        knobs: every setting the value depends on (preset, substrate, score space, target rule, tie rule, ...).
        curves: optional [B,K,S] per-sample curves (e.g. deletion scores per step).
        curve_x: optional [S] abscissa of the curves (fraction of the image perturbed).
        extras: per-sample tensors with leading [B,K] that dataset-level aggregates need.
        aggregate: name in `AGGREGATORS` ("mean" = NaN-excluding mean of `values`).
        flagged: [B,K] bool where the metric flags a sample without making it NaN (e.g. near-zero fraction
            with max s ≤ 0, metrics.md §4).
    """

    name: str
    values: torch.Tensor
    direction: str
    knobs: dict[str, Any] = field(default_factory=dict)
    curves: torch.Tensor | None = None
    curve_x: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    aggregate: str = "mean"
    flagged: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        self.values = self.values.detach().to("cpu", torch.float64)
        if self.values.dim() == 1:
            self.values = self.values.unsqueeze(1)
        if self.curves is not None:
            self.curves = self.curves.detach().to("cpu", torch.float64)
        self.extras = {k: v.detach().cpu() for k, v in self.extras.items()}

    @property
    def value(self) -> float:
        """The dataset-level aggregate (NaN samples excluded)."""
        return AGGREGATORS[self.aggregate](self)

    @property
    def n(self) -> int:
        """Number of (image, target) samples with a finite value."""
        return int((~torch.isnan(self.values)).sum())

    @property
    def n_nan(self) -> int:
        """Number of undefined samples (excluded from the aggregate)."""
        return int(torch.isnan(self.values).sum())

    def select(self, index: torch.Tensor | Sequence[int]) -> MetricResult:
        """The result restricted to images `index` (used for bootstrap resampling)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return replace(
            self,
            values=self.values[idx],
            curves=None if self.curves is None else self.curves[idx],
            extras={k: v[idx] for k, v in self.extras.items()},
            flagged=None if self.flagged is None else self.flagged[idx],
        )

    @staticmethod
    def concat(results: Sequence[MetricResult]) -> MetricResult:
        """Stack batch (or shard) results of the same output along images, in the given order."""
        if not results:
            raise ValueError("nothing to concatenate")
        first = results[0]

        def cat(items: list[torch.Tensor | None]) -> torch.Tensor | None:
            return None if any(i is None for i in items) else torch.cat(items)  # type: ignore[arg-type]

        return replace(
            first,
            values=torch.cat([r.values for r in results]),
            curves=cat([r.curves for r in results]),
            extras={k: torch.cat([r.extras[k] for r in results]) for k in first.extras},
            flagged=cat([r.flagged for r in results]),
        )

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly dict: name, value, direction, n, n_nan, knobs."""
        return {"name": self.name, "value": self.value, "direction": self.direction, "n": self.n,
                "n_nan": self.n_nan, "n_flagged": 0 if self.flagged is None else int(self.flagged.sum()),
                "knobs": _jsonable(self.knobs)}


def knob_record(**knobs: Any) -> dict[str, Any]:
    """A result's knobs record: the given settings without the unset (None) ones."""
    return {k: v for k, v in knobs.items() if v is not None}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)


# ----------------------------------------------------------------------------- inputs


@dataclass
class MetricInputs:
    """Everything a metric may read for one batch; each metric takes the fields its signature names.

    Attributes:
        model: image → logits callable (a timm model, an interpretable model, ...).
        images: [B,3,H,W] in the model's input (normalised) space.
        exp: the `Explanation` of these images.
        labels: [B] ground-truth class ids.
        masks: [B,H,W] or [B,K,H,W] bool localisation targets (object, class or trait masks).
        boxes: per image a [n,4] float xyxy tensor in model-input pixels.
        part_masks: [B,n_parts,H,W] bool.
        explainer: `(model, images, target) -> Explanation` that re-explains with the same method and options.
        indices: [B] dataset indices; they seed per-image randomness so results do not depend on batching.
        siblings: [B,S] TraitShapes sibling classes of each image's class (−1 pads).
        disc_masks: [B,S,H,W] bool sibling-discriminative masks M_{c,c′} (datasets.md).
        class_masks: [B,H,W] bool TraitShapes class masks.
    """

    model: Any = None
    images: torch.Tensor | None = None
    exp: Any = None
    labels: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    boxes: list[torch.Tensor] | None = None
    part_masks: torch.Tensor | None = None
    explainer: Callable[..., Any] | None = None
    indices: torch.Tensor | None = None
    siblings: torch.Tensor | None = None
    disc_masks: torch.Tensor | None = None
    class_masks: torch.Tensor | None = None

    def as_kwargs(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class MetricInfo:
    """What a metric is, what it needs and what it costs (metrics.md §0 "Registry metadata", §7).

    Attributes:
        name: registry name, e.g. "deletion".
        fn: the metric function; returns a `MetricResult` or a dict of them (one per output).
        category: "faithfulness" | "robustness" | "localisation" | "complexity" | "sanity" | "discriminative".
        outputs: output name → direction ("higher" | "lower" | "none").
        needs: subset of {"model", "labels", "boxes", "masks", "part_masks", "trait_masks", "explainer"}; "masks" is
            satisfied by boxes too (they rasterise); "trait_masks" means TraitShapes siblings and masks.
        cost: forwards / explanation calls per (image, target), in words.
        summary: one line for listings.
        spec: the spec section, e.g. "metrics.md §1.1".
    """

    name: str
    fn: Callable[..., Any]
    category: str
    outputs: dict[str, str]
    needs: frozenset[str]
    cost: str
    summary: str
    spec: str

    @property
    def direction(self) -> str:
        """Direction of the first (main) output."""
        return next(iter(self.outputs.values()))

    def compute(self, inputs: MetricInputs, **knobs: Any) -> dict[str, MetricResult]:
        """Run the metric on one batch, passing the inputs its signature names, plus `knobs`."""
        params = inspect.signature(self.fn).parameters
        available = inputs.as_kwargs()
        kwargs = {k: v for k, v in available.items() if k in params and v is not None}
        bad = [k for k in knobs if k not in params]
        if bad:
            raise TypeError(f"metric '{self.name}' has no option(s) {', '.join(bad)}; "
                            f"options: {', '.join(p for p in params if p not in available)}")
        out = self.fn(**kwargs, **knobs)
        if isinstance(out, MetricResult):
            out = {out.name: out}
        return out


_METRICS: dict[str, MetricInfo] = {}


def register_metric(
    name: str,
    *,
    category: str,
    needs: Sequence[str],
    cost: str,
    summary: str,
    spec: str,
    direction: str | None = None,
    outputs: dict[str, str] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Function decorator adding a metric to the registry under `name`.

    Pass `direction` for a single-output metric (the output is named `name`) or `outputs` for several.
    """
    if (direction is None) == (outputs is None):
        raise ValueError("pass exactly one of direction= or outputs=")
    outs = {name: cast(str, direction)} if outputs is None else dict(outputs)  # exactly one is given (checked)
    if any(d not in DIRECTIONS for d in outs.values()):
        raise ValueError(f"directions must be in {DIRECTIONS}")
    if category not in CATEGORIES:
        raise ValueError(f"category must be in {CATEGORIES}")
    unknown = set(needs) - NEEDS
    if unknown:
        raise ValueError(f"unknown needs {unknown}; choose from {sorted(NEEDS)}")

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _METRICS:
            raise ValueError(f"metric '{name}' is already registered")
        info = MetricInfo(name, fn, category, outs, frozenset(needs), cost, summary, spec)
        _METRICS[name] = info
        fn.metric_info = info  # type: ignore[attr-defined]
        return fn

    return deco


def list_metrics(pattern: str = "*", category: str | None = None) -> list[MetricInfo]:
    """Registered metrics whose name (or one of whose outputs) matches the glob `pattern`, sorted by name."""
    return [
        info for name, info in sorted(_METRICS.items())
        if (fnmatch.fnmatch(name, pattern) or any(fnmatch.fnmatch(o, pattern) for o in info.outputs))
        and (category is None or info.category == category)
    ]


def get_metric(name: str) -> MetricInfo:
    """Look a metric up by registry name or by output name (e.g. "road_morf" → "road")."""
    if name in _METRICS:
        return _METRICS[name]
    for info in _METRICS.values():
        if name in info.outputs:
            return info
    known = sorted({*(_METRICS), *(o for i in _METRICS.values() for o in i.outputs)})
    raise ValueError(f"unknown metric '{name}'; available: {', '.join(known)}")


def resolve_metrics(names: Sequence[str]) -> dict[str, list[str]]:
    """Map requested names (metrics or outputs) to {metric name: outputs to report}, computing each metric once."""
    plan: dict[str, list[str]] = {}
    for name in names:
        info = get_metric(name)
        wanted = list(info.outputs) if name == info.name else [name]
        outs = plan.setdefault(info.name, [])
        outs.extend(o for o in wanted if o not in outs)
    return plan
