"""`evaluate`: score explanation methods with metrics over a dataset (api.md; metrics.md).

One call explains every batch with every method, runs every requested metric on it, and writes a summary table
(CSV, JSON, Markdown), per-image results, deletion/insertion curves per method and metric bars with bootstrap
confidence intervals over images. Maps and per-batch metric results are cached under `out/cache`, keyed by the
model's weights, the method and its options, and the batch's content, so an interrupted run continues where it
stopped and a changed model or dataset never reuses stale maps.

Under `torchrun` (an initialised `torch.distributed` group, gloo on CPU) each rank evaluates a contiguous shard of
the images and the results are gathered in rank order, so the table equals a single-process run.

Metric names may carry a mask source, `"name@source"`: `object` (the item's `mask`, else its rasterised `box`),
`box`, `trait` (TraitShapes sibling-discriminative masks; every (image, sibling) pair is a sample) or `class`
(TraitShapes class masks), e.g. `"pointing_game@trait"`.

Targets: the true label (GT-known), the prediction, or the least similar class (`target="lsc"`, metrics.md §6,
see `traitlens.evaluation.lsc`). Multi-label datasets (items with a multi-hot `labels`, see `_data`) explain and
score every present class of an image under `target="label"`; images with fewer classes than the batch's widest
image get padded target slots, which are NaN in `values`, marked in `extras["padded"]` and not counted as undefined.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from traitlens._io import atomic_write
from traitlens.backbones.preprocess import normalize
from traitlens.evaluation._data import Batch, TraitInfo, load_batch, trait_info
from traitlens.evaluation.lsc import LSC_READING, LscRule, check_lsc_rule, lsc_targets
from traitlens.explain import Explanation, explain, get_method
from traitlens.metrics import MetricInfo, MetricInputs, MetricResult, get_metric

__all__ = ["MASK_SOURCES", "TARGETS", "EvalResults", "Explainer", "evaluate", "model_fingerprint"]

log = logging.getLogger(__name__)

MASK_SOURCES = ("object", "box", "trait", "class")
TARGETS = ("label", "pred", "lsc")
"""Target rules of `evaluate`: the true class, the top-1 prediction (alias "top1"), the least similar class."""
Explainer = Callable[[nn.Module, torch.Tensor, Any], Explanation]
"""`(model, images in model space, target) -> Explanation`: a method bound to its options."""


# ----------------------------------------------------------------------------- requests


@dataclass
class _Request:
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


def _parse_requests(metrics: Sequence[str], metric_options: Mapping[str, Mapping[str, Any]]) -> list[_Request]:
    reqs: dict[tuple[str, str | None], _Request] = {}
    for spec in metrics:
        name, _, source = spec.partition("@")
        source = source or None
        if source is not None and source not in MASK_SOURCES:
            raise ValueError(f"unknown mask source '{source}' in '{spec}'; choose from {MASK_SOURCES}")
        info = get_metric(name)
        if source is not None and "masks" not in info.needs:
            raise ValueError(f"'{spec}': metric '{info.name}' takes no masks, so it cannot have a mask source")
        wanted = list(info.outputs) if name == info.name else [name]
        knobs = {**metric_options.get(info.name, {}),
                 **(metric_options.get(f"{info.name}@{source}", {}) if source else {}),
                 **(metric_options.get(spec, {}) if spec != info.name else {})}
        req = reqs.setdefault((info.name, source), _Request(info, source, [], knobs))
        req.outputs.extend(o for o in wanted if o not in req.outputs)
    return list(reqs.values())


# ----------------------------------------------------------------------------- results


@dataclass
class EvalResults:
    """What `evaluate` measured.

    Attributes:
        rows: one summary dict per (method, metric): method, metric, category, direction, value, ci_low,
            ci_high, n, n_nan, n_flagged.
        results: (method, metric label) → the concatenated `MetricResult` over all images (per-sample values,
            curves, knobs).
        indices: dataset indices of the evaluated images, in result order.
        timing: method → explanation seconds per image.
        skipped: "method" or "method/metric" → why it was not computed.
        out: the output folder, when written.
        figures: name → PNG bytes (curves, bars).
        config: what was run (methods, metrics, target rule and LSC rule, options), as written to results.json.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    results: dict[tuple[str, str], MetricResult] = field(default_factory=dict)
    indices: torch.Tensor | None = None
    timing: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    out: Path | None = None
    figures: dict[str, bytes] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(m for m, _ in self.results))

    @property
    def metrics(self) -> list[str]:
        return list(dict.fromkeys(k for _, k in self.results))

    def value(self, method: str, metric: str) -> float:
        """The aggregate of `metric` for `method` (NaN when absent)."""
        r = self.results.get((method, metric))
        return math.nan if r is None else r.value

    def row(self, method: str, metric: str) -> dict[str, Any] | None:
        return next((r for r in self.rows if r["method"] == method and r["metric"] == metric), None)

    def to_markdown(self, ci: bool = True) -> str:
        """Methods × metrics, with ↑/↓ and the bootstrap CI."""
        metrics = self.metrics
        arrows = {"higher": " ↑", "lower": " ↓", "none": ""}
        head = ["method", *(m + arrows[self.results[(self.methods[0], m)].direction] if (self.methods[0], m)
                             in self.results else m for m in metrics), "s/img"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for method in self.methods:
            cells = [method]
            for m in metrics:
                row = self.row(method, m)
                if row is None or row["value"] is None or math.isnan(row["value"]):
                    cells.append("–")
                elif ci and row.get("ci_low") is not None and not math.isnan(row["ci_low"]):
                    cells.append(f"{row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]")
                else:
                    cells.append(f"{row['value']:.3f}")
            t = self.timing.get(method)
            cells.append("–" if t is None else f"{t:.4f}")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- helpers


def model_fingerprint(model: nn.Module) -> str:
    """A short hash of the model class and every parameter and buffer (cache key)."""
    h = hashlib.sha1(type(model).__qualname__.encode())
    for name, t in list(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        if t.is_floating_point() or t.is_complex():
            t = t.detach().to("cpu", torch.float32)
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def _batch_key(batch: Batch) -> str:
    """Hash of a batch's images, labels and masks (cache key)."""
    h = hashlib.sha1()
    for t in (batch.images01, batch.labels, batch.masks, batch.disc_masks, batch.present, batch.present_masks):
        if t is not None:
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:10]


def _hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=repr).encode()).hexdigest()[:8]


def _device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _make_explainer(name: str, options: Mapping[str, Any]) -> Explainer:
    def run(model: nn.Module, images: torch.Tensor, target: Any) -> Explanation:
        return explain(model, images, method=name, target=target, **options)

    return run


def _save_exp(path: Path, exp: Explanation, seconds: float) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in
               {"maps": exp.maps, "patch_maps": exp.patch_maps, "targets": exp.targets, "logits": exp.logits,
                "head_maps": exp.head_maps, "degenerate": exp.degenerate}.items() if v is not None}
    raw = exp.extras.get("raw_pixel_maps") if exp.extras else None
    same = raw is not None and raw is exp.maps
    if raw is not None and not same:
        tensors["raw_pixel_maps"] = raw.detach().cpu().clone()  # safetensors refuses tensors that share memory
    meta = {"method": exp.method, "signed": str(exp.signed), "seconds": repr(seconds),
            "raw_is_maps": str(same)}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))


def _load_exp(path: Path, device: torch.device) -> tuple[Explanation, float]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        t = {k: fh.get_tensor(k).to(device) for k in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    extras = {"raw_pixel_maps": t.pop("raw_pixel_maps")} if "raw_pixel_maps" in t else {}
    if meta.get("raw_is_maps") == "True":
        extras["raw_pixel_maps"] = t["maps"]
    exp = Explanation(maps=t["maps"], patch_maps=t["patch_maps"], targets=t["targets"], method=meta["method"],
                      logits=t.get("logits"), head_maps=t.get("head_maps"), degenerate=t.get("degenerate"),
                      signed=meta["signed"] == "True", extras=extras)
    return exp, float(meta["seconds"])


def _save_results(path: Path, results: dict[str, MetricResult]) -> None:
    blob = {k: asdict(v) for k, v in results.items()}
    atomic_write(path, lambda p: torch.save(blob, p))


def _load_results(path: Path) -> dict[str, MetricResult]:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return {k: MetricResult(**v) for k, v in blob.items()}


def _expand(exp: Explanation, S: int) -> Explanation:
    """The K = 1 explanation repeated over S sibling slots, so each (image, sibling) pair is a sample."""
    if exp.maps.shape[1] != 1:
        raise ValueError("mask source 'trait' needs one target per image (K = 1)")
    B = exp.maps.shape[0]
    extras = dict(exp.extras)
    if "raw_pixel_maps" in extras:
        extras["raw_pixel_maps"] = extras["raw_pixel_maps"].expand(B, S, *extras["raw_pixel_maps"].shape[-2:])
    return replace(exp, maps=exp.maps.expand(B, S, *exp.maps.shape[-2:]),
                   patch_maps=exp.patch_maps.expand(B, S, *exp.patch_maps.shape[-2:]),
                   targets=exp.targets.expand(B, S), head_maps=None, extras=extras)


def _unmet(req: _Request, batch: Batch, per_class: bool) -> str | None:
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
        src = req.source or "object"
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


def _class_box_masks(batch: Batch) -> torch.Tensor:
    """[B,K,H,W]: per present class the rasterised union of its boxes (multi-label, mask source 'box')."""
    from traitlens.metrics import boxes_to_masks

    B, K = batch.present.shape
    out = torch.zeros(B, K, *batch.images01.shape[-2:], dtype=torch.bool)
    for b in range(B):
        for k, c in enumerate(batch.present[b].tolist()):
            if c >= 0:
                out[b, k] = boxes_to_masks([batch.boxes[b][batch.box_labels[b] == c]], out.shape[-2:])[0]
    return out


def _inputs(req: _Request, model: nn.Module, x: torch.Tensor, exp: Explanation, batch: Batch,
            explainer: Explainer, per_class: bool) -> MetricInputs:
    masks, e, boxes = batch.masks, exp, batch.boxes
    src = req.source or "object"
    if per_class:  # one mask per present class, aligned with the explained targets; boxes mix classes
        masks = _class_box_masks(batch) if src == "box" else batch.present_masks
        boxes = None
    elif "masks" in req.info.needs:
        if src == "box":
            masks = None  # metrics rasterise the boxes themselves
        elif src == "class":
            masks = batch.class_masks
        elif src == "trait":
            masks = batch.disc_masks
            e = _expand(exp, masks.shape[1])
    # Metrics prefer masks over boxes when both are given; boxes still serve box-only options (best_box, WSOL).
    return MetricInputs(model=model, images=x, exp=e, labels=batch.labels, masks=masks, boxes=boxes,
                        part_masks=batch.part_masks, explainer=explainer, indices=batch.indices,
                        siblings=batch.siblings, disc_masks=batch.disc_masks, class_masks=batch.class_masks)


def _batch_targets(target: str, lsc: LscRule | None, model: nn.Module, x: torch.Tensor, batch: Batch,
                   traits: TraitInfo | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The classes to explain ([B] or [B,K]; None lets the explainer take its top-1) and, when every present class
    of multi-label images is a target, the [B,K] bool mask of padded slots."""
    if target == "pred":
        return None, None
    if target == "lsc":
        table = traits.class_traits if traits is not None else None
        return lsc_targets(model, x, lsc, batch.labels, table), None
    if batch.multi_label:
        pad = batch.present < 0
        # a padded slot repeats the image's first present class (explainers need valid ids); its score is dropped
        filled = torch.where(pad, batch.present[:, :1].clamp_min(0), batch.present)
        return filled.to(x.device), pad
    return (batch.labels.to(x.device) if batch.labels is not None else None), None


def _fill(t: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """`t` [B,K,...] with padded slots set to NaN (float), False (bool) or −1 (ids)."""
    if t.dim() < 2 or t.shape[:2] != pad.shape:
        return t
    m = pad.view(*pad.shape, *([1] * (t.dim() - 2)))
    if t.dtype == torch.bool:
        return t & ~m
    return t.masked_fill(m, math.nan if t.is_floating_point() else -1)


def _mark_padding(r: MetricResult, pad: torch.Tensor | None) -> MetricResult:
    """Padded target slots become NaN samples that aggregates skip; `extras['padded']` keeps them apart from
    undefined samples. Outputs without one value per target (e.g. [B,1] summaries) are left as they are."""
    if pad is None or r.values.shape != pad.shape:
        return r
    pad = pad.cpu()
    extras = {k: _fill(v, pad) for k, v in r.extras.items()}
    extras["padded"] = pad.clone()
    return replace(r, values=_fill(r.values, pad), curves=None if r.curves is None else _fill(r.curves, pad),
                   flagged=None if r.flagged is None else _fill(r.flagged, pad), extras=extras)


def _widen(r: MetricResult, K: int) -> MetricResult:
    """`r` with its target axis padded to K slots (batches of multi-label data differ in K)."""
    B, k = r.values.shape
    if k == K:
        return r

    def grow(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, t.new_zeros((B, K - k, *t.shape[2:]))], 1)

    pad = grow(r.extras.get("padded", torch.zeros(B, k, dtype=torch.bool)))
    pad[:, k:] = True
    wide = replace(r, values=grow(r.values), curves=None if r.curves is None else grow(r.curves),
                   flagged=None if r.flagged is None else grow(r.flagged),
                   extras={n: grow(v) for n, v in r.extras.items() if n != "padded"})
    return _mark_padding(wide, pad)


def _concat(results: Sequence[MetricResult]) -> MetricResult:
    """`MetricResult.concat` that first pads every result to the widest target axis."""
    K = max(r.values.shape[1] for r in results)
    wide = [_widen(r, K) for r in results]
    if any("padded" in r.extras for r in wide):
        wide = [r if "padded" in r.extras else
                replace(r, extras={**r.extras, "padded": torch.zeros(r.values.shape, dtype=torch.bool)})
                for r in wide]
    return MetricResult.concat(wide)


def _n_padded(r: MetricResult) -> int:
    pad = r.extras.get("padded")
    return 0 if pad is None else int(pad.sum())


# ----------------------------------------------------------------------------- evaluate


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    methods: Sequence[str] = ("cdam",),
    metrics: Sequence[str] = ("deletion", "insertion", "pointing_game"),
    out: str | Path | None = None,
    *,
    batch_size: int = 16,
    max_images: int | None = None,
    target: str = "label",
    lsc: LscRule | None = None,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    metric_options: Mapping[str, Mapping[str, Any]] | None = None,
    explainers: Mapping[str, Explainer] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
    resume: bool = True,
    plots: bool | None = None,
) -> EvalResults:
    """Explain `dataset` with every method and score the maps with every metric.

    Args:
        model: the classifier (eval mode); images are normalised with its own mean/std.
        dataset: dict items with `image` [3,H,W] in [0,1] and `label` (+ `mask`, `box`, TraitShapes masks), or
            multi-label items with a multi-hot `labels` [C] and a `mask` per present class (or `box` with
            `box_labels`).
        methods: registry names (`traitlens.list_methods()`) and/or keys of `explainers`.
        metrics: registry names or output names (`traitlens.metrics.list_metrics()`), optionally "name@source"
            with source in object | box | trait | class. Derived: "insertion_minus_deletion" is added when both
            deletion and insertion are requested.
        out: folder for results.csv/.json/.md, per_image.csv, plots/ and cache/; None keeps everything in memory.
        batch_size: images per explanation call (metrics chunk their own perturbations).
        max_images: evaluate only the first N images.
        target: which class to explain: "label" (GT-known, the default; multi-label data: every present class),
            "pred" / "top1" (the prediction) or "lsc" (the least similar class, metrics.md §6, scored and reported
            separately: see `traitlens.evaluation.lsc` for how to read it).
        lsc: with target="lsc", the rule: "min_logit" (default; the lowest logit), "traits" (TraitShapes: the
            class differing from the true class in the most trait slots, ties → lowest index) or a mapping
            {true_class: lsc_class}. "wordnet" is refused (its corpus cannot be downloaded).
        method_options: method → options for `explain` (e.g. {"rollout": {"discard_ratio": 0.9}}).
        metric_options: metric (or "metric@source") → knobs (e.g. {"deletion": {"steps": 16}}).
        explainers: extra named explainers `(model, images, target) -> Explanation` (peer-library adapters).
        n_boot: bootstrap resamples over images for the confidence intervals (0 disables).
        resume: reuse cached maps and metric results under `out/cache`.
        plots: draw curves and bars (default: when `out` is given).

    Returns:
        `EvalResults` (on every rank; only rank 0 writes files).

    Example:
        >>> res = evaluate(model, test_set, methods=["cdam", "rollout"], metrics=["deletion", "pointing_game"],
        ...                out="runs/eval", max_images=64)  # doctest: +SKIP
        >>> print(res.to_markdown())  # doctest: +SKIP
    """
    target = "pred" if target == "top1" else target  # the CLI's word for the prediction
    if target not in TARGETS:
        raise ValueError(f"target must be 'label', 'pred' (alias 'top1') or 'lsc', got {target!r}")
    if lsc is not None and target != "lsc":
        raise ValueError(f"lsc={lsc!r} is only used with target='lsc' (got target={target!r})")
    method_options = dict(method_options or {})
    metric_options = dict(metric_options or {})
    explainers = dict(explainers or {})
    requests = _parse_requests(metrics, metric_options)
    rank, world = _dist()
    n_total = len(dataset) if max_images is None else min(len(dataset), max_images)
    lo, hi = rank * n_total // world, (rank + 1) * n_total // world
    device = _device_of(model)
    traits: TraitInfo | None = trait_info(dataset)
    lsc_rule = check_lsc_rule(lsc, traits.class_traits if traits is not None else None) if target == "lsc" else None
    out_dir = Path(out) if out is not None else None
    fp = model_fingerprint(model) if out_dir is not None else ""
    res = EvalResults(out=out_dir)
    runners: dict[str, Explainer] = {}
    for name in methods:
        if name in explainers:
            runners[name] = explainers[name]
        else:
            get_method(name)  # unknown names fail early, with the list of known ones
            runners[name] = _make_explainer(name, method_options.get(name, {}))

    local: dict[tuple[str, str], list[MetricResult]] = {}
    failed: set[str] = set()
    failed_metrics: set[tuple[str, str]] = set()
    seconds: dict[str, list[float]] = {m: [0.0, 0.0] for m in runners}  # [seconds, images]
    from tqdm.auto import tqdm

    multi_label = False
    starts = list(range(lo, hi, batch_size))
    bar = tqdm(total=len(starts) * len(runners), desc="evaluate", unit="batch·method",
               disable=not progress or rank != 0)
    for start in starts:
        idx = list(range(start, min(start + batch_size, hi)))
        batch = load_batch(dataset, idx, traits)
        x = normalize(model, batch.images01.to(device))
        # the cache key covers the batch content too, so a changed dataset never reuses stale maps
        data_key = _batch_key(batch)
        tgt, padded = _batch_targets(target, lsc_rule, model, x, batch, traits)
        multi_label = multi_label or batch.multi_label
        for name, runner in runners.items():
            if name in failed:
                bar.update(1)
                continue
            bar.set_postfix_str(name)
            opts = {"options": method_options.get(name, {}), "target": target, "lsc": lsc_rule,
                    "peer": name in explainers}
            mdir = out_dir / "cache" / fp / f"{name.replace(':', '_')}-{_hash(opts)}" if out_dir else None
            exp_path = mdir / f"{idx[0]:07d}-{idx[-1] + 1:07d}-{data_key}.safetensors" if mdir else None
            try:
                if exp_path is not None and resume and exp_path.is_file():
                    exp, secs = _load_exp(exp_path, device)
                else:
                    t0 = time.perf_counter()
                    exp = runner(model, x, tgt)
                    secs = time.perf_counter() - t0
                    if exp_path is not None:
                        _save_exp(exp_path, exp, secs)
            except Exception as err:  # one broken method must not cost the whole evaluation
                log.warning("method %s failed on images %d..%d: %s", name, idx[0], idx[-1], err)
                res.skipped[name] = f"{type(err).__name__}: {err}"
                failed.add(name)
                for key in [k for k in local if k[0] == name]:  # partial results would misalign images
                    del local[key]
                bar.update(1)
                continue
            seconds[name][0] += secs
            seconds[name][1] += len(idx)
            for req in requests:
                why = _unmet(req, batch, padded is not None)
                if why is not None or (name, req.key) in failed_metrics:
                    if why is not None:
                        res.skipped[f"{name}/{req.key}"] = why
                    continue
                rpath = (mdir / "metrics" / f"{req.key}-{_hash(req.knobs)}" /
                         f"{idx[0]:07d}-{idx[-1] + 1:07d}-{data_key}.pt" if mdir else None)
                try:
                    if rpath is not None and resume and rpath.is_file():
                        outs = _load_results(rpath)
                    else:
                        inputs = _inputs(req, model, x, exp, batch, runner, padded is not None)
                        outs = {k: _mark_padding(v, padded) for k, v in req.info.compute(inputs, **req.knobs).items()}
                        if rpath is not None:
                            _save_results(rpath, outs)
                except Exception as err:
                    log.warning("metric %s failed for %s: %s", req.key, name, err)
                    res.skipped[f"{name}/{req.key}"] = f"{type(err).__name__}: {err}"
                    failed_metrics.add((name, req.key))
                    for key in [k for k in local if k[0] == name and k[1] in {req.label(o) for o in req.outputs}]:
                        del local[key]
                    continue
                for o in req.outputs:
                    if o in outs:
                        local.setdefault((name, req.label(o)), []).append(outs[o])
            bar.update(1)
    bar.close()

    merged = {k: _concat(v) for k, v in local.items()}
    indices = torch.arange(lo, hi)
    if world > 1:
        merged, indices, seconds, res.skipped = _gather(merged, indices, seconds, res.skipped)
    _derive(merged, requests)
    order = {label: i for i, label in enumerate(req.label(o) for req in requests for o in req.outputs)}
    res.results = dict(sorted(merged.items(), key=lambda kv: (list(runners).index(kv[0][0]),
                                                              order.get(kv[0][1], len(order)))))
    res.indices = indices
    res.timing = {m: s / n for m, (s, n) in seconds.items() if n}
    res.rows = [_summary_row(m, k, r, n_boot, seed) for (m, k), r in res.results.items()]
    if (plots if plots is not None else out_dir is not None) and res.results:
        res.figures = _figures(res)
    res.config = {"methods": list(runners), "metrics": list(metrics), "target": target, "lsc": lsc_rule,
                  "multi_label": multi_label, "n_images": n_total, "model_fingerprint": fp,
                  "method_options": method_options, "metric_options": metric_options}
    if out_dir is not None and rank == 0:
        _write(res, out_dir, res.config)
    return res


def _gather(merged: dict[tuple[str, str], MetricResult], indices: torch.Tensor, seconds: dict[str, list[float]],
            skipped: dict[str, str]) -> tuple[dict[tuple[str, str], MetricResult], torch.Tensor,
                                               dict[str, list[float]], dict[str, str]]:
    """All-gather every rank's results (gloo pickles them) and concatenate in rank order."""
    import torch.distributed as dist

    payload = {"results": merged, "indices": indices, "seconds": seconds, "skipped": skipped}
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, payload)
    keys = list(dict.fromkeys(k for g in gathered for k in g["results"]))
    # a result missing on some rank (a method or metric failed there) cannot be aligned with the images: drop it
    complete = [k for k in keys if all(k in g["results"] or len(g["indices"]) == 0 for g in gathered)]
    out = {k: _concat([g["results"][k] for g in gathered if k in g["results"]]) for k in complete}
    secs = {m: [sum(g["seconds"][m][0] for g in gathered), sum(g["seconds"][m][1] for g in gathered)]
            for m in seconds}
    skip: dict[str, str] = {}
    for g in gathered:
        skip.update(g["skipped"])
    for k in keys:
        if k not in complete:
            skip.setdefault(f"{k[0]}/{k[1]}", "failed on some ranks")
    return out, torch.cat([g["indices"] for g in gathered]), secs, skip


def _derive(merged: dict[tuple[str, str], MetricResult], requests: Sequence[_Request]) -> None:
    """insertion − deletion (↑, metrics.md §1.1) per sample, when both were computed on the same targets."""
    for method in list(dict.fromkeys(m for m, _ in merged)):
        d, i = merged.get((method, "deletion")), merged.get((method, "insertion"))
        if d is not None and i is not None and d.values.shape == i.values.shape:
            merged[(method, "insertion_minus_deletion")] = MetricResult(
                "insertion_minus_deletion", i.values - d.values, "higher",
                {"spec": "metrics.md §1.1", "derived": "insertion − deletion", "deletion": d.knobs,
                 "insertion": i.knobs},
                extras={k: v for k, v in i.extras.items() if k == "padded"})


# ----------------------------------------------------------------------------- summary and bootstrap


def bootstrap_ci(result: MetricResult, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the aggregate, resampling images with replacement (NaN samples stay excluded).

    The default 'mean' aggregate is resampled vectorised; dataset-level aggregates (PxAP, MaxBoxAccV2, macro
    pointing game, pooled r) are recomputed on min(n_boot, 200) resamples.
    """
    N = result.values.shape[0]
    if n_boot <= 0 or N < 2:
        return math.nan, math.nan
    g = torch.Generator().manual_seed(seed)
    q = torch.tensor([(1 - level) / 2, 1 - (1 - level) / 2], dtype=torch.float64)
    if result.aggregate == "mean":
        v = result.values
        finite = ~torch.isnan(v)
        sums = torch.where(finite, v, torch.zeros_like(v)).sum(1)
        counts = finite.sum(1).double()
        idx = torch.randint(0, N, (n_boot, N), generator=g)
        stats = sums[idx].sum(1) / counts[idx].sum(1)
    else:
        idx = torch.randint(0, N, (min(n_boot, 200), N), generator=g)
        stats = torch.tensor([result.select(i).value for i in idx], dtype=torch.float64)
    stats = stats[~torch.isnan(stats)]
    if stats.numel() == 0:
        return math.nan, math.nan
    lo, hi = torch.quantile(stats, q).tolist()
    return lo, hi


def _summary_row(method: str, label: str, r: MetricResult, n_boot: int, seed: int) -> dict[str, Any]:
    lo, hi = bootstrap_ci(r, n_boot, seed)
    name = label.partition("@")[0]
    try:
        category = get_metric(name).category
    except ValueError:
        category = "derived"
    return {"method": method, "metric": label, "category": category, "direction": r.direction, "value": r.value,
            "ci_low": lo, "ci_high": hi, "n": r.n, "n_nan": r.n_nan - _n_padded(r),
            "n_flagged": 0 if r.flagged is None else int(r.flagged.sum())}


# ----------------------------------------------------------------------------- figures and files


def _figures(res: EvalResults) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from traitlens.viz import figure_png

    figs: dict[str, bytes] = {}
    curve_metrics = [m for m in res.metrics if m.partition("@")[0] in ("deletion", "insertion")]
    if curve_metrics:
        fig, axes = plt.subplots(1, len(curve_metrics), figsize=(4.2 * len(curve_metrics), 3.2), squeeze=False)
        for ax, metric in zip(axes[0], curve_metrics, strict=True):
            for method in res.methods:
                r = res.results.get((method, metric))
                if r is None or r.curves is None:
                    continue
                mean = r.curves.flatten(0, 1).nanmean(0)
                ax.plot(r.curve_x.numpy(), mean.numpy(), label=f"{method} ({r.value:.3f})")
            ax.set_title(f"{metric} ({'↑' if metric.startswith('insertion') else '↓'} AUC)")
            ax.set_xlabel("fraction of the image perturbed")
            ax.set_ylabel("mean target score")
            ax.legend(fontsize=6)
        figs["curves"] = figure_png(fig)
    labels = list(res.metrics)
    if labels:
        cols = min(4, len(labels))
        rows = math.ceil(len(labels) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
        fig.subplots_adjust(hspace=0.9, wspace=0.35)  # room for rotated method names under every row
        for ax, metric in zip(axes.flat, labels, strict=False):
            vals, errs, names = [], [[], []], []
            for method in res.methods:
                row = res.row(method, metric)
                if row is None:
                    continue
                names.append(method)
                v = row["value"]
                vals.append(v)
                lo, hi = row["ci_low"], row["ci_high"]
                errs[0].append(0 if math.isnan(lo) or math.isnan(v) else max(v - lo, 0))
                errs[1].append(0 if math.isnan(hi) or math.isnan(v) else max(hi - v, 0))
            direction = next((res.results[(m, metric)].direction for m in names), "none")
            ax.bar(range(len(vals)), vals, yerr=errs, capsize=2, color="#4c72b0")
            ax.set_xticks(range(len(vals)), names, rotation=60, ha="right", fontsize=6)
            ax.set_title(metric + {"higher": " ↑", "lower": " ↓", "none": ""}[direction], fontsize=8)
            ax.tick_params(axis="y", labelsize=6)
        for ax in list(axes.flat)[len(labels):]:
            ax.axis("off")
        figs["metrics"] = figure_png(fig)
    return figs


def _write(res: EvalResults, out: Path, config: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    fields = ["method", "metric", "category", "direction", "value", "ci_low", "ci_high", "n", "n_nan", "n_flagged"]
    _write_csv(out / "results.csv", fields, res.rows)
    per_image = []
    idx = res.indices.tolist() if res.indices is not None else []
    for (method, metric), r in res.results.items():
        pad = r.extras.get("padded", torch.zeros(r.values.shape, dtype=torch.bool))
        for i, row in enumerate(r.values.tolist()):
            for k, v in enumerate(row):
                if pad[i, k]:
                    continue
                per_image.append({"method": method, "metric": metric, "index": idx[i] if i < len(idx) else i,
                                  "slot": k, "value": v})
    _write_csv(out / "per_image.csv", ["method", "metric", "index", "slot", "value"], per_image)
    knobs = {f"{m}/{k}": r.summary()["knobs"] for (m, k), r in res.results.items()}
    doc = {"config": config, "summary": res.rows, "timing_seconds_per_image": res.timing, "skipped": res.skipped,
           "knobs": knobs}
    text = json.dumps(_clean(doc), indent=2, default=repr, allow_nan=False)
    atomic_write(out / "results.json", lambda p: p.write_text(text))
    md = ["# traitlens evaluation", "", f"{config['n_images']} images, target = {_target_text(config)}; "
          "values are aggregates with 95 % bootstrap CIs over images; ↑ / ↓ = higher / lower is better"
          + (" for the class a map explains (see the reading below)." if config["target"] == "lsc" else "."), "",
          res.to_markdown(), ""]
    if config["target"] == "lsc":
        md += ["## Reading the least-similar-class (LSC) scores", "",
               "Every map explains the image's least similar class (metrics.md §6, SCOUTER Table 1): "
               f"{_LSC_TEXT.get(str(config['lsc']), 'the class given by the user mapping in results.json')}. "
               "Report these numbers separately from the true-class ones. " + LSC_READING, ""]
    if res.skipped:
        md += ["## Skipped", "", *(f"- {k}: {v}" for k, v in sorted(res.skipped.items())), ""]
    atomic_write(out / "results.md", lambda p: p.write_text("\n".join(md), encoding="utf-8"))
    for name, png in res.figures.items():
        atomic_write(out / "plots" / f"{name}.png", lambda p, png=png: p.write_bytes(png))


_LSC_TEXT = {
    "min_logit": "the class with the lowest logit for the image (lsc = min_logit)",
    "traits": "the class whose trait tuple differs from the true class in the most slots, ties to the lowest class "
              "index (lsc = traits)",
}


def _target_text(config: Mapping[str, Any]) -> str:
    """The target rule in words, for results.md."""
    if config["target"] == "lsc":
        rule = config["lsc"] if isinstance(config["lsc"], str) else "mapping"
        return f"least similar class (lsc = {rule})"
    if config["target"] == "label" and config.get("multi_label"):
        return ("label, every present class of a multi-label image (pointing game: per-class accuracy, then the mean "
                "over classes)")
    return str(config["target"])


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf → None, tuples → lists, keys → str."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _write_csv(path: Path, fields: list[str], rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, lambda p: p.write_text(buf.getvalue(), encoding="utf-8"))
