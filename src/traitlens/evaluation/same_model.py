"""The same-model table: an interpretable-by-design model's own maps against post-hoc methods run on that same
model, scored on TraitShapes trait masks and for faithfulness, with bootstrap CIs over images and chance levels
(metrics.md §9).

Rows: the native map (head mean, `explain(model, x, method="native")`), the native map of the top-k heads ranked
by blurring (Prompt-CAM only, models.md §1.5), and every registered post-hoc method that runs on the model. The
chance row scores maps that know nothing: a uniform map for the mask metrics (computed exactly) and a seeded random
pixel order for deletion / insertion. Every score comes from `evaluate` and the metric functions it calls.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from traitlens.evaluation._data import load_batch, trait_info
from traitlens.evaluation.evaluate import EvalResults, evaluate
from traitlens.evaluation.results import bootstrap_ci
from traitlens.explain import Explanation, explain, get_method, list_methods, method_refusal
from traitlens.metrics import MetricResult, energy_share
from traitlens.models import InterpretableModel
from traitlens.ops.morphology import dilate

__all__ = ["COLUMNS", "KINDS", "Estimate", "SameModelRow", "SameModelTable", "same_model_rows", "same_model_table"]

log = logging.getLogger(__name__)

#: Table column → (evaluate metric label, direction).
COLUMNS: dict[str, tuple[str, str]] = {
    "trait_pg": ("pointing_game@trait", "higher"),
    "trait_energy": ("energy_pointing_game@trait", "higher"),
    "class_pg": ("pointing_game@class", "higher"),
    "class_energy": ("energy_pointing_game@class", "higher"),
    "deletion": ("deletion", "lower"),
    "insertion": ("insertion", "higher"),
    "ins_minus_del": ("insertion_minus_deletion", "higher"),
}
KINDS = ("native", "native top-k", "post-hoc", "chance")
"""Map kinds of the rows: the model's head-mean map, its top-k-heads map, a post-hoc method, the chance level."""

_ARROWS = {"higher": "↑", "lower": "↓"}


@dataclass(frozen=True)
class Estimate:
    """A mean over the evaluated images with its 95 % percentile-bootstrap CI; `n` finite samples."""

    value: float
    ci_low: float
    ci_high: float
    n: int

    def text(self) -> str:
        """'0.512 [0.431, 0.602]', '0.512' without a CI, '–' when undefined."""
        if math.isnan(self.value):
            return "–"
        if math.isnan(self.ci_low):
            return f"{self.value:.3f}"
        return f"{self.value:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}]"

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in (("value", self.value), ("ci_low", self.ci_low), ("ci_high", self.ci_high),
                             ("n", self.n))}


@dataclass(frozen=True)
class SameModelRow:
    """One map kind's scores: column → `Estimate` (missing columns: not computed for this row)."""

    method: str
    kind: str
    values: dict[str, Estimate]
    s_per_img: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "kind": self.kind, "s_per_img": self.s_per_img,
                "values": {c: e.to_dict() for c, e in self.values.items()}}


@dataclass
class SameModelTable:
    """What `same_model_table` measured on one model.

    Attributes:
        model: the model's class name (its kind).
        rows: native rows first, then the post-hoc methods in registry order.
        chance: the chance level of every column.
        accuracy: top-1 accuracy of the model on the evaluated images (bootstrap CI).
        n_images: images evaluated.
        skipped: method (or "method/metric", or the top-k row) → why it has no row or column.
        knobs: what the numbers depend on (masks, tolerance, steps, seed, bootstrap).
    """

    model: str
    rows: list[SameModelRow]
    chance: SameModelRow
    accuracy: Estimate
    n_images: int
    skipped: dict[str, str] = field(default_factory=dict)
    knobs: dict[str, Any] = field(default_factory=dict)

    def row(self, method: str) -> SameModelRow:
        """The row of `method` ("native", "native_top4", "chance", a registry name)."""
        for r in [*self.rows, self.chance]:
            if r.method == method:
                return r
        raise KeyError(f"no row '{method}'; rows: {', '.join(r.method for r in [*self.rows, self.chance])}")

    def summary(self) -> str:
        """One line for a report: the model, its accuracy on the images and which methods were skipped."""
        line = f"{self.model}: accuracy {self.accuracy.text()} on {self.n_images} images"
        return line + (f"; skipped: {', '.join(self.skipped)}" if self.skipped else "")

    def to_markdown(self) -> str:
        """The table, the accuracy line and every skipped method with its reason."""
        header, body = same_model_rows(self)
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in body]
        lines += ["", f"{self.model}: accuracy {self.accuracy.text()} on {self.n_images} images."]
        if self.skipped:
            lines += ["", "Skipped:", *(f"- {k}: {v}" for k, v in self.skipped.items())]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN → null)."""
        return {"model": self.model, "n_images": self.n_images, "accuracy": self.accuracy.to_dict(),
                "columns": {c: COLUMNS[c][1] for c in COLUMNS}, "rows": [r.to_dict() for r in self.rows],
                "chance": self.chance.to_dict(), "skipped": dict(self.skipped), "knobs": self.knobs}


def same_model_rows(table: SameModelTable) -> tuple[list[str], list[list[Any]]]:
    """(header, rows) for `HtmlReport.table`: method, map kind, "mean [CI]" per column, s/img; chance row last."""
    header = ["method", "map", *(f"{c} {_ARROWS[d]}" for c, (_, d) in COLUMNS.items()), "s/img"]
    body = []
    for r in [*table.rows, table.chance]:
        cells = [r.values[c].text() if c in r.values else "–" for c in COLUMNS]
        body.append([r.method, r.kind, *cells, "–" if r.s_per_img is None else f"{r.s_per_img:.4f}"])
    return header, body


# ----------------------------------------------------------------------------- refusals


def _method_refusal(model: nn.Module, name: str, x: torch.Tensor, target: torch.Tensor,
                    **options: Any) -> str | None:
    """Why `name` cannot run on `model` (None when it can).

    The registry's rule (`traitlens.explain.method_refusal`, the method's families against the model's) first; then
    one probe image for refusals that depend on the options (e.g. ranked heads on a model without a ranking).
    """
    reason = method_refusal(model, name)
    if reason is not None:
        return reason
    try:
        explain(model, x, method=name, target=target, **options)
    except (TypeError, NotImplementedError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    return None


# ----------------------------------------------------------------------------- the table


def _metric_options(size: int, steps: int | None, tol: float | None) -> tuple[float, dict[str, dict[str, Any]]]:
    tol = tol if tol is not None else max(1, round(15 * size / 224))  # TorchRay's 15 px at 224, scaled
    opts: dict[str, dict[str, Any]] = {
        "pointing_game": {"tol": tol},
        "energy_pointing_game": {"sign": "positive"},
    }
    if steps is not None:
        opts["deletion"] = {"steps": steps}
        opts["insertion"] = {"steps": steps}
    return tol, opts


def _constant_map(model: nn.Module, x: torch.Tensor, target: Any) -> Explanation:
    """A map with no information; with `tie_break='random'` deletion/insertion remove pixels in a seeded random
    order (per image: seed and dataset index), i.e. score a random map."""
    t = torch.as_tensor(target, device=x.device).long().view(x.shape[0], -1)
    maps = torch.zeros(x.shape[0], t.shape[1], *x.shape[-2:], dtype=x.dtype, device=x.device)
    return Explanation(maps=maps, patch_maps=maps, targets=t, method="random", signed=False)


def _top_k_explainer(k: int, blur: str) -> Any:
    def run(model: nn.Module, x: torch.Tensor, target: Any) -> Explanation:
        return explain(model, x, method="native", target=target, top_heads=k, blur=blur)

    return run


def _top_k_refusal(model: nn.Module, x: torch.Tensor, target: torch.Tensor, top_k: int | str,
                   blur: str) -> tuple[int, str | None]:
    """(k, why the top-k-heads row cannot be made or None): "auto" is round(R/3), at least 1 (4 of 12 heads)."""
    heads = explain(model, x, method="native", target=target).head_maps
    n_heads = 0 if heads is None else int(heads.shape[2])
    k = max(1, round(n_heads / 3)) if top_k == "auto" else int(top_k)
    if heads is None:
        return k, f"{type(model).__name__} has no attention heads"
    if k >= n_heads:
        return k, f"top_k={k} ≥ the model's {n_heads} heads: the map is the head mean"
    return k, _method_refusal(model, "native", x, target, top_heads=k, blur=blur)


def _estimate(row: dict[str, Any] | None) -> Estimate | None:
    if row is None:
        return None
    return Estimate(float(row["value"]), float(row["ci_low"]), float(row["ci_high"]), int(row["n"]))


def _rows(res: EvalResults, kinds: Mapping[str, str]) -> list[SameModelRow]:
    rows = []
    for name in res.methods:
        values = {c: e for c, (label, _) in COLUMNS.items()
                  if (e := _estimate(res.row(name, label))) is not None}
        rows.append(SameModelRow(name, kinds[name], values, res.timing.get(name)))
    return rows


def _chance_and_accuracy(model: nn.Module, dataset: Dataset, n: int, tol: float, batch_size: int,
                         ) -> tuple[dict[str, MetricResult], MetricResult]:
    """Per-sample chance of the four mask columns and per-image correctness.

    A uniform map puts energy |M|/|image| inside M, and a uniformly drawn argmax hits with probability
    |dilate(M, tol)|/|image|, the pixels within the tolerance; both are `energy_share` of a constant map. The
    pointing chance keeps the pointing game's per-class (macro) aggregate.
    """
    from traitlens.backbones.preprocess import normalize

    traits = trait_info(dataset)
    device = next(model.parameters()).device
    parts: dict[str, list[torch.Tensor]] = {c: [] for c in ("trait_pg", "trait_energy", "class_pg", "class_energy")}
    classes: dict[str, list[torch.Tensor]] = {"trait": [], "class": []}
    hits = []
    for start in range(0, n, batch_size):
        batch = load_batch(dataset, list(range(start, min(start + batch_size, n))), traits)
        if batch.disc_masks is None or batch.class_masks is None or batch.labels is None:
            raise ValueError("the same-model table needs TraitShapes trait masks and labels")
        for src, masks in (("trait", batch.disc_masks), ("class", batch.class_masks[:, None])):
            ones = torch.ones(masks.shape, dtype=torch.float64)
            parts[f"{src}_energy"].append(energy_share(ones, masks))
            pg = energy_share(ones, dilate(masks, tol))
            parts[f"{src}_pg"].append(torch.where(masks.flatten(-2).any(-1), pg, torch.full_like(pg, math.nan)))
            classes[src].append(batch.labels[:, None].expand(-1, masks.shape[1]))
        with torch.no_grad():
            pred = model(normalize(model, batch.images01.to(device))).argmax(-1).cpu()
        hits.append((pred == batch.labels).double())
    out = {}
    for col, values in parts.items():
        src = col.split("_")[0]
        pointing = col.endswith("_pg")
        out[col] = MetricResult(f"chance:{col}", torch.cat(values), "higher", {"chance": "uniform map"},
                                extras={"classes": torch.cat(classes[src])} if pointing else {},
                                aggregate="macro_classes" if pointing else "mean")
    return out, MetricResult("accuracy", torch.cat(hits), "higher")


def same_model_table(
    model: nn.Module,
    dataset: Dataset,
    *,
    methods: Sequence[str] | None = None,
    n_images: int = 64,
    top_k: int | str | None = "auto",
    blur: str = "all",
    seed: int = 0,
    progress: bool = False,
    steps: int | None = 16,
    tol: float | None = None,
    batch_size: int = 16,
    n_boot: int = 1000,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> SameModelTable:
    """Score an interpretable model's native maps against post-hoc methods computed on that same model.

    Args:
        model: a `PromptCAM`, `INTR` or `SCOUTER` (eval mode).
        dataset: a TraitShapes split (in memory, or its CUB export read back with `traits.json`).
        methods: post-hoc registry names; default every registered method. Those the model refuses go to
            `skipped` with the reason.
        n_images: the first N images.
        top_k: heads of the "native_top{k}" row (Prompt-CAM's ranking by blurring, models.md §1.5); "auto" keeps
            the reference's share, `top_traits` 4 of ViT-B's 12 heads: round(R/3), at least 1; None for no such
            row. Models without ranked heads (INTR, SCOUTER) or with ≤ k heads skip it, with the reason.
        blur: Prompt-CAM ranking blur, "all" (reference) or "patches".
        seed: seeds the random removal order of the chance row and the bootstrap.
        steps: deletion/insertion steps (None: one row of pixels per step, the RISE reference).
        tol: pointing-game tolerance in px (default 15 px scaled from 224 px to the image size).
        n_boot: bootstrap resamples over images (0: no CIs).
        method_options: method → options for `explain`.

    Returns:
        A `SameModelTable`; every map explains the true label.

    Raises:
        TypeError: the model is not interpretable by design. ValueError: no TraitShapes masks, bad n_images,
            an unknown method name.
    """
    if not isinstance(model, InterpretableModel):
        raise TypeError(f"the same-model table needs an interpretable-by-design model (PromptCAM, INTR or SCOUTER), "
                        f"not {type(model).__name__}")
    if trait_info(dataset) is None:
        raise ValueError("the same-model table needs TraitShapes trait masks: an in-memory TraitShapes split or its "
                         "CUB export read back with CUBDataset (traits.json)")
    n = min(int(n_images), len(cast(Sized, dataset)))
    if n < 1:
        raise ValueError(f"n_images must be at least 1, got {n_images}")
    if top_k is not None and top_k != "auto" and (isinstance(top_k, str) or int(top_k) < 1):
        raise ValueError(f"top_k must be a positive number of heads, 'auto' or None, got {top_k!r}")
    names = [m.name for m in list_methods()] if methods is None else list(methods)
    for name in names:
        get_method(name)  # an unknown name is the caller's error, not a refusal
    method_options = dict(method_options or {})
    from traitlens.backbones.preprocess import normalize

    first = dataset[0]
    x0 = normalize(model, first["image"][None].float().to(next(model.parameters()).device))
    t0 = torch.tensor([int(first["label"])], device=x0.device)
    skipped: dict[str, str] = {}
    posthoc = []
    for name in dict.fromkeys(names):
        if name == "native":
            continue  # always a row of its own
        why = _method_refusal(model, name, x0, t0, **method_options.get(name, {}))
        if why is None:
            posthoc.append(name)
        else:
            skipped[name] = why
    kinds = {"native": "native", **dict.fromkeys(posthoc, "post-hoc")}
    explainers = {}
    k = None
    if top_k is not None:
        k, why = _top_k_refusal(model, x0, t0, top_k, blur)
        if why is None:
            explainers[f"native_top{k}"] = _top_k_explainer(k, blur)
            kinds[f"native_top{k}"] = "native top-k"
        else:
            skipped[f"native_top{k}"] = why
    size = int(first["image"].shape[-1])
    tol, opts = _metric_options(size, steps, tol)
    metrics = [label for c, (label, _) in COLUMNS.items() if c != "ins_minus_del"]
    order = ["native", *explainers, *posthoc]
    res = evaluate(model, dataset, methods=order, metrics=metrics, batch_size=batch_size, max_images=n,
                   target="label", method_options=method_options, metric_options=opts, explainers=explainers,
                   n_boot=n_boot, seed=seed, progress=progress, plots=False)
    skipped.update(res.skipped)
    rows = _rows(res, kinds)

    random_opts = {m: {"steps": steps, "tie_break": "random", "seed": seed} for m in ("deletion", "insertion")}
    rand = evaluate(model, dataset, methods=["random"], metrics=["deletion", "insertion"], batch_size=batch_size,
                    max_images=n, target="label", metric_options=random_opts, explainers={"random": _constant_map},
                    n_boot=n_boot, seed=seed, progress=False, plots=False)
    chance_masks, acc = _chance_and_accuracy(model, dataset, n, tol, batch_size)
    chance_values = {c: Estimate(r.value, *bootstrap_ci(r, n_boot, seed), r.n) for c, r in chance_masks.items()}
    chance_values.update(next((r.values for r in _rows(rand, {"random": "chance"})), {}))
    chance = SameModelRow("chance", "chance", {c: chance_values[c] for c in COLUMNS if c in chance_values})
    knobs = {"target": "label", "trait masks": "sibling-discriminative M_{c,c'}, one sample per (image, sibling)",
             "class masks": "union of the class-defining trait parts", "tol_px": tol, "steps": steps,
             "pointing": "macro over classes", "energy": "sign='positive'", "seed": seed, "n_boot": n_boot,
             "ci": "95 % percentile bootstrap over images", "top_k": top_k, "top_k_heads": k, "blur": blur,
             "chance": {"masks": "uniform map: area (pointing: tol-dilated area) fraction, averaged like the metric",
                        "deletion/insertion": "random pixel order (constant map, tie_break='random', seeded)"}}
    return SameModelTable(type(model).__name__, rows, chance, Estimate(acc.value, *bootstrap_ci(acc, n_boot, seed),
                                                                       acc.n), n, skipped, knobs)
