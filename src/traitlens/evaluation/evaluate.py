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

Every method is called once per batch with all of its images' targets ([B,K]); for the methods whose registry entry
declares `batched_targets` (CDAM, Grad-CAM, TAM, the native maps, ...) that call runs the network once per batch
whatever K (tests/evaluation/test_evaluate_batched.py counts the passes).

This module holds `evaluate` and its loop; the steps live beside it: `requests`, `inputs`, `cache`, `padding`,
`distributed`, `results`, `figures` and `writers`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from traitlens.backbones.preprocess import normalize
from traitlens.evaluation._data import Batch, TraitInfo, load_batch, trait_info
from traitlens.evaluation.cache import BatchCache, EvalCache, batch_key, model_fingerprint
from traitlens.evaluation.distributed import gather_results, rank_and_world, shard
from traitlens.evaluation.figures import evaluation_figures
from traitlens.evaluation.inputs import batch_targets, metric_inputs
from traitlens.evaluation.lsc import LscRule, check_lsc_rule
from traitlens.evaluation.padding import concat_results, mark_padding
from traitlens.evaluation.requests import MASK_SOURCES, MetricRequest, parse_requests, unmet_need
from traitlens.evaluation.results import EvalResults, bootstrap_ci, derive_metrics, sort_results, summary_row
from traitlens.evaluation.writers import write_results
from traitlens.explain import Explanation, explain, get_method
from traitlens.metrics import MetricResult

__all__ = ["MASK_SOURCES", "TARGETS", "EvalResults", "Explainer", "bootstrap_ci", "evaluate", "model_fingerprint"]

log = logging.getLogger(__name__)

TARGETS = ("label", "pred", "lsc")
"""Target rules of `evaluate`: the true class, the top-1 prediction (alias "top1"), the least similar class."""
Explainer = Callable[[nn.Module, torch.Tensor, Any], Explanation]
"""`(model, images in model space, target) -> Explanation`: a method bound to its options."""


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
    target = _check_target(target, lsc)
    method_options = dict(method_options or {})
    metric_options = dict(metric_options or {})
    explainers = dict(explainers or {})
    requests = parse_requests(metrics, metric_options)
    rank, world = rank_and_world()
    n_total = len(cast(Sized, dataset)) if max_images is None else min(len(cast(Sized, dataset)), max_images)
    lo, hi = shard(n_total, rank, world)
    traits: TraitInfo | None = trait_info(dataset)
    lsc_rule = check_lsc_rule(lsc, traits.class_traits if traits is not None else None) if target == "lsc" else None
    out_dir = Path(out) if out is not None else None
    fp = model_fingerprint(model) if out_dir is not None else ""
    runners = _runners(methods, explainers, method_options)
    run = _Run(model, _device_of(model), requests, target, lsc_rule, traits, EvalCache(out_dir, fp, resume),
               method_options, set(explainers))
    tally = _Tally(seconds={m: [0.0, 0.0] for m in runners})
    _loop(run, tally, dataset, runners, range(lo, hi), batch_size, progress and rank == 0)
    res = _collect(run, tally, list(runners), torch.arange(lo, hi), world, n_boot, seed)
    res.out = out_dir
    if (plots if plots is not None else out_dir is not None) and res.results:
        res.figures = evaluation_figures(res)
    res.config = {"methods": list(runners), "metrics": list(metrics), "target": target, "lsc": lsc_rule,
                  "multi_label": tally.multi_label, "n_images": n_total, "model_fingerprint": fp,
                  "method_options": method_options, "metric_options": metric_options}
    if out_dir is not None and rank == 0:
        write_results(res, out_dir, res.config)
    return res


def _check_target(target: str, lsc: LscRule | None) -> str:
    """The target rule with the CLI's "top1" read as "pred"; unknown rules and a stray `lsc=` fail early."""
    target = "pred" if target == "top1" else target  # the CLI's word for the prediction
    if target not in TARGETS:
        raise ValueError(f"target must be 'label', 'pred' (alias 'top1') or 'lsc', got {target!r}")
    if lsc is not None and target != "lsc":
        raise ValueError(f"lsc={lsc!r} is only used with target='lsc' (got target={target!r})")
    return target


def _device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _make_explainer(name: str, options: Mapping[str, Any]) -> Explainer:
    def run(model: nn.Module, images: torch.Tensor, target: Any) -> Explanation:
        return explain(model, images, method=name, target=target, **options)

    return run


def _runners(methods: Sequence[str], explainers: Mapping[str, Explainer],
             method_options: Mapping[str, Mapping[str, Any]]) -> dict[str, Explainer]:
    """name → explainer: the given `explainers`, else registry methods bound to their options."""
    runners: dict[str, Explainer] = {}
    for name in methods:
        if name in explainers:
            runners[name] = explainers[name]
        else:
            get_method(name)  # unknown names fail early, with the list of known ones
            runners[name] = _make_explainer(name, method_options.get(name, {}))
    return runners


# ----------------------------------------------------------------------------- the loop, in steps


@dataclass
class _Run:
    """The fixed inputs of one evaluation."""

    model: nn.Module
    device: torch.device
    requests: list[MetricRequest]
    target: str
    lsc_rule: LscRule | None
    traits: TraitInfo | None
    cache: EvalCache
    method_options: Mapping[str, Mapping[str, Any]]
    peers: set[str]

    def cache_options(self, method: str) -> dict[str, Any]:
        """What the maps of `method` depend on besides the model and the images (its cache folder key)."""
        return {"options": self.method_options.get(method, {}), "target": self.target, "lsc": self.lsc_rule,
                "peer": method in self.peers}


@dataclass
class _Tally:
    """What the loop accumulates on this rank."""

    seconds: dict[str, list[float]]  # method → [explanation seconds, images]
    local: dict[tuple[str, str], list[MetricResult]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)
    failed_metrics: set[tuple[str, str]] = field(default_factory=set)
    multi_label: bool = False

    def drop(self, method: str, labels: set[str] | None = None) -> None:
        """Forget the results of `method` (only `labels` when given): partial results would misalign images."""
        for key in [k for k in self.local if k[0] == method and (labels is None or k[1] in labels)]:
            del self.local[key]


@dataclass
class _Step:
    """One batch, ready to explain: the annotations, the model-space images and the targets."""

    batch: Batch
    x: torch.Tensor
    targets: torch.Tensor | None
    padded: torch.Tensor | None  # [B,K] padded target slots (multi-label), else None

    @property
    def indices(self) -> list[int]:
        return self.batch.indices.tolist()


def _loop(run: _Run, tally: _Tally, dataset: Dataset, runners: Mapping[str, Explainer], span: range,
          batch_size: int, show: bool) -> None:
    """Explain and score every batch of `span` with every method."""
    from tqdm.auto import tqdm

    starts = list(range(span.start, span.stop, batch_size))
    bar = tqdm(total=len(starts) * len(runners), desc="evaluate", unit="batch·method", disable=not show)
    for start in starts:
        step = _prepare(run, dataset, list(range(start, min(start + batch_size, span.stop))))
        tally.multi_label = tally.multi_label or step.batch.multi_label
        # the cache key covers the batch content too, so a changed dataset never reuses stale maps
        data_key = batch_key(step.batch)
        for name, runner in runners.items():
            if name not in tally.failed:
                bar.set_postfix_str(name)
                cache = run.cache.batch(name, run.cache_options(name), step.indices, data_key)
                exp = _explain_step(run, tally, name, runner, step, cache)
                if exp is not None:
                    _score_step(run, tally, name, runner, step, exp, cache)
            bar.update(1)
    bar.close()


def _prepare(run: _Run, dataset: Dataset, idx: list[int]) -> _Step:
    batch = load_batch(dataset, idx, run.traits)
    x = normalize(run.model, batch.images01.to(run.device))
    targets, padded = batch_targets(run.target, run.lsc_rule, run.model, x, batch, run.traits)
    return _Step(batch, x, targets, padded)


def _explain_step(run: _Run, tally: _Tally, name: str, runner: Explainer, step: _Step,
                  cache: BatchCache) -> Explanation | None:
    """The maps of one (method, batch), cached or computed; None when the method failed (it is then dropped)."""
    hit = cache.load_explanation(run.device)
    if hit is not None:
        exp, secs = hit
    else:
        try:
            t0 = time.perf_counter()
            exp = runner(run.model, step.x, step.targets)
            secs = time.perf_counter() - t0
            cache.save_explanation(exp, secs)
        except Exception as err:  # one broken method must not cost the whole evaluation
            idx = step.indices
            log.warning("method %s failed on images %d..%d: %s", name, idx[0], idx[-1], err)
            tally.skipped[name] = f"{type(err).__name__}: {err}"
            tally.failed.add(name)
            tally.drop(name)
            return None
    tally.seconds[name][0] += secs
    tally.seconds[name][1] += len(step.indices)
    return exp


def _score_step(run: _Run, tally: _Tally, name: str, runner: Explainer, step: _Step, exp: Explanation,
                cache: BatchCache) -> None:
    """Every request that can run on this batch, on the maps of one method; results are appended to the tally."""
    for req in run.requests:
        why = unmet_need(req, step.batch, step.padded is not None)
        if why is not None:
            tally.skipped[f"{name}/{req.key}"] = why
            continue
        if (name, req.key) in tally.failed_metrics:
            continue
        outs = cache.load_results(req.key, req.knobs)
        if outs is None:
            outs = _compute(run, tally, name, runner, step, exp, req, cache)
            if outs is None:
                continue
        for o in req.outputs:
            if o in outs:
                tally.local.setdefault((name, req.label(o)), []).append(outs[o])


def _compute(run: _Run, tally: _Tally, name: str, runner: Explainer, step: _Step, exp: Explanation,
             req: MetricRequest, cache: BatchCache) -> dict[str, MetricResult] | None:
    """The outputs of one request on one batch, padded slots marked, written to the cache; None when the metric
    failed (it is then dropped for this method)."""
    try:
        inputs = metric_inputs(req, run.model, step.x, exp, step.batch, runner, step.padded is not None)
        outs = {k: mark_padding(v, step.padded) for k, v in req.info.compute(inputs, **req.knobs).items()}
        cache.save_results(req.key, req.knobs, outs)
        return outs
    except Exception as err:
        log.warning("metric %s failed for %s: %s", req.key, name, err)
        tally.skipped[f"{name}/{req.key}"] = f"{type(err).__name__}: {err}"
        tally.failed_metrics.add((name, req.key))
        tally.drop(name, set(req.labels))
        return None


def _collect(run: _Run, tally: _Tally, methods: list[str], indices: torch.Tensor, world: int, n_boot: int,
             seed: int) -> EvalResults:
    """Concatenate the batches (gathering every rank's), add derived metrics, order them and summarise."""
    merged = {k: concat_results(v) for k, v in tally.local.items()}
    seconds, skipped = tally.seconds, tally.skipped
    if world > 1:
        merged, indices, seconds, skipped = gather_results(merged, indices, seconds, skipped)
    derive_metrics(merged)
    results = sort_results(merged, methods, [label for req in run.requests for label in req.labels])
    return EvalResults(rows=[summary_row(m, k, r, n_boot, seed) for (m, k), r in results.items()], results=results,
                       indices=indices, timing={m: s / n for m, (s, n) in seconds.items() if n}, skipped=skipped)
