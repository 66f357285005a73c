"""Metric requests of `evaluate`: parse `"name@source"` specs, merge their knobs, and say when one cannot run on a
batch (metrics.md; api.md `tl.evaluate`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from traitlens.evaluation._data import Batch
from traitlens.metrics import MetricInfo, get_metric

__all__ = ["MASK_SOURCES", "MetricRequest", "parse_requests", "unmet_need"]

MASK_SOURCES = ("object", "box", "trait", "class")
"""Where a metric's masks come from: the item's mask (else its box), its boxes, TraitShapes sibling-discriminative
masks (every (image, sibling) pair is a sample) or TraitShapes class masks."""


@dataclass
class MetricRequest:
    """One metric computation: a registry metric, an optional mask source, the outputs to keep and knobs."""

    info: MetricInfo
    source: str | None
    outputs: list[str]
    knobs: dict[str, Any]

    @property
    def key(self) -> str:
        return self.info.name + (f"@{self.source}" if self.source else "")

    def label(self, output: str) -> str:
        return output + (f"@{self.source}" if self.source else "")

    @property
    def labels(self) -> list[str]:
        """The result labels this request produces, in output order."""
        return [self.label(o) for o in self.outputs]


def parse_requests(metrics: Sequence[str], metric_options: Mapping[str, Mapping[str, Any]]) -> list[MetricRequest]:
    """One request per (metric, mask source); output names select outputs, knobs merge metric → metric@source →
    the exact spec. Unknown names and sources fail here, before any image is explained."""
    reqs: dict[tuple[str, str | None], MetricRequest] = {}
    for spec in metrics:
        name, _, given = spec.partition("@")
        source = given or None
        if source is not None and source not in MASK_SOURCES:
            raise ValueError(f"unknown mask source '{source}' in '{spec}'; choose from {MASK_SOURCES}")
        info = get_metric(name)
        if source is not None and "masks" not in info.needs:
            raise ValueError(f"'{spec}': metric '{info.name}' takes no masks, so it cannot have a mask source")
        wanted = list(info.outputs) if name == info.name else [name]
        knobs = {**metric_options.get(info.name, {}),
                 **(metric_options.get(f"{info.name}@{source}", {}) if source else {}),
                 **(metric_options.get(spec, {}) if spec != info.name else {})}
        req = reqs.setdefault((info.name, source), MetricRequest(info, source, [], knobs))
        req.outputs.extend(o for o in wanted if o not in req.outputs)
    return list(reqs.values())


def unmet_need(req: MetricRequest, batch: Batch, per_class: bool) -> str | None:
    """Why `req` cannot run on `batch` (None when it can); `per_class`: every present class is a target."""
    needs = req.info.needs
    if "labels" in needs and batch.labels is None:
        return ("needs one label per image; the dataset is multi-label" if batch.multi_label
                else "the dataset has no labels")
    if "boxes" in needs and (batch.boxes is None or per_class):
        return ("needs the boxes of one target class; multi-label images carry boxes of several classes"
                if per_class and batch.boxes is not None else "the dataset has no boxes")
    if "trait_masks" in needs and batch.siblings is None:
        return ("needs TraitShapes trait masks (a TraitShapes dataset, or its CUB export read back with "
                "traits.json and part masks)")
    if "masks" in needs:
        return _unmet_masks(req.source or "object", batch, per_class)
    return None


def _unmet_masks(src: str, batch: Batch, per_class: bool) -> str | None:
    """Why mask source `src` has no masks on `batch` (None when it has)."""
    if src in ("trait", "class") and batch.siblings is None:
        return f"mask source '{src}' needs TraitShapes trait masks"
    if src == "object" and batch.masks is None:
        return "the dataset has neither masks nor boxes"
    if src == "box" and batch.boxes is None:
        return "the dataset has no boxes"
    if src == "box" and per_class and batch.box_labels is None:
        return "mask source 'box' on multi-label data needs the class of every box ('box_labels')"
    if src == "object" and per_class and batch.present_masks is None:
        return "multi-label data needs a mask per present class, or boxes with 'box_labels'"
    return None
