"""The TraitShapes leaderboard: every post-hoc method (and native model maps, and peer libraries) scored against
the known trait masks and for faithfulness, on the same trained model (datasets.md "Scoring"; metrics.md).

The headline columns use the **sibling-discriminative** mask M_{c,c′} — the one part where the image's class
differs from a sibling class — since the union of a class's trait parts barely separates finding traits from
finding the object. Each (image, sibling) pair is a sample:

- trait_pg: pointing game on M_{c,c′} (tolerance 15 px scaled from 224 px to the image size);
- trait_energy: share of positive saliency inside M_{c,c′} (EBPG with `sign='positive'`);
- trait_iou: IoU of the area-matched top-|M| pixels with M_{c,c′} (rank-based, so sign- and scale-free);
- contrast_energy: share of (s_c − s_{c′})⁺ inside M_{c,c′} ("why c, not c′"; class-specific methods only);
- object_energy: share of positive saliency on the whole critter;
- deletion / insertion (RISE AUC, softmax probability of the explained class) and their difference.

Peer-library rows come through small adapters: pytorch-grad-cam's CAMs on `blocks[-1].norm1` with a reshape
transform built from the model's own grid, and captum's IntegratedGradients.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from traitlens.evaluation._data import trait_info
from traitlens.evaluation.evaluate import EvalResults, Explainer, evaluate
from traitlens.explain import Explanation, explain, get_method, list_methods

__all__ = [
    "COLUMNS",
    "OTHER_SOURCE_COLOUR",
    "PEER_METHODS",
    "SOURCE_COLOURS",
    "Leaderboard",
    "leaderboard",
    "leaderboard_small",
    "leaderboard_table",
    "list_peer_methods",
    "peer_explainer",
]

log = logging.getLogger(__name__)

#: Leaderboard column → (evaluate metric label, direction).
#: Bar colour per map source (the `source` of a leaderboard row), shared by every leaderboard figure.
SOURCE_COLOURS: dict[str, str] = {"traitlens": "#4c72b0", "native": "#55a868", "pytorch-grad-cam": "#dd8452",
                                  "captum": "#c44e52"}
#: Bar colour of a source not in `SOURCE_COLOURS`.
OTHER_SOURCE_COLOUR = "#8172b3"

COLUMNS: dict[str, tuple[str, str]] = {
    "trait_pg": ("pointing_game@trait", "higher"),
    "trait_energy": ("energy_pointing_game@trait", "higher"),
    "trait_iou": ("iou@trait", "higher"),
    "contrast_energy": ("contrast_ebpg", "higher"),
    "object_energy": ("energy_pointing_game@object", "higher"),
    "deletion": ("deletion", "lower"),
    "insertion": ("insertion", "higher"),
    "ins_minus_del": ("insertion_minus_deletion", "higher"),
}


# ----------------------------------------------------------------------------- peer adapters


def _grid(model: nn.Module, size: tuple[int, int]) -> tuple[int, tuple[int, int]]:
    from traitlens.backbones.introspect import vit_layout

    layout = vit_layout(model, size)
    return layout.num_prefix_tokens, layout.grid


def _resolve_targets(model: nn.Module, x: torch.Tensor, target: Any) -> torch.Tensor:
    if target is None:
        with torch.no_grad():
            return model(x).argmax(-1, keepdim=True)
    t = torch.as_tensor(target, device=x.device).long()
    return t.view(-1, 1) if t.dim() == 1 else t


def _pgc_explainer(cam_name: str, **options: Any) -> Explainer:
    """A pytorch-grad-cam CAM as an `Explainer`: target layer `blocks[-1].norm1`, tokens reshaped to the model's grid
    (not a hard-coded 14×14), one call per target column; its min-max normalised maps are kept as they are."""

    def run(model: nn.Module, x: torch.Tensor, target: Any) -> Explanation:
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        targets = _resolve_targets(model, x, target)
        n_p, (g_h, g_w) = _grid(model, (x.shape[-2], x.shape[-1]))

        def reshape(t: torch.Tensor) -> torch.Tensor:
            return t[:, n_p:, :].reshape(t.shape[0], g_h, g_w, t.shape[-1]).permute(0, 3, 1, 2)

        cls = getattr(pgc, cam_name)
        maps = []
        blocks: Any = model.blocks  # a timm ViT's block list (nn.Module.__getattr__ is untyped)
        with cls(model=model, target_layers=[blocks[-1].norm1], reshape_transform=reshape) as cam:
            if hasattr(cam, "batch_size"):
                cam.batch_size = options.get("batch_size", 64)
            for k in range(targets.shape[1]):
                outs = [ClassifierOutputTarget(int(t)) for t in targets[:, k]]
                maps.append(torch.from_numpy(np.asarray(cam(input_tensor=x, targets=outs), dtype=np.float32)))
        model.zero_grad(set_to_none=True)  # pytorch-grad-cam calls backward(); leave no .grad behind
        m = torch.stack(maps, 1).to(x)
        patch = F.adaptive_avg_pool2d(m, (g_h, g_w))
        return Explanation(maps=m, patch_maps=patch, targets=targets, method=f"pgc:{cam_name}", signed=False,
                           extras={"raw_pixel_maps": m})

    return run


def _captum_ig_explainer(n_steps: int = 50, internal_batch_size: int = 64, **_: Any) -> Explainer:
    """captum's IntegratedGradients (zero baseline in model space, Gauss–Legendre, 50 steps) as an `Explainer`:
    pixel maps = the channel mean (signed, un-normalised); patch maps sum-pool p×p patches (traitlens' pixel-method
    convention)."""

    def run(model: nn.Module, x: torch.Tensor, target: Any) -> Explanation:
        from captum.attr import IntegratedGradients

        targets = _resolve_targets(model, x, target)
        _, (g_h, g_w) = _grid(model, (x.shape[-2], x.shape[-1]))
        ig = IntegratedGradients(lambda z: model(z))
        maps = torch.stack([
            ig.attribute(x, baselines=0.0, target=targets[:, k], n_steps=n_steps,
                         internal_batch_size=internal_batch_size).mean(1)
            for k in range(targets.shape[1])], 1).detach()
        patch = F.adaptive_avg_pool2d(maps, (g_h, g_w)) * (maps.shape[-2] // g_h) * (maps.shape[-1] // g_w)
        return Explanation(maps=maps, patch_maps=patch, targets=targets, method="captum:ig", signed=True,
                           extras={"raw_pixel_maps": maps})

    return run


PEER_METHODS: dict[str, tuple[str, Callable[..., Explainer], dict[str, Any]]] = {
    "pgc:gradcam": ("pytorch_grad_cam", _pgc_explainer, {"cam_name": "GradCAM"}),
    "pgc:gradcam++": ("pytorch_grad_cam", _pgc_explainer, {"cam_name": "GradCAMPlusPlus"}),
    "pgc:xgradcam": ("pytorch_grad_cam", _pgc_explainer, {"cam_name": "XGradCAM"}),
    "pgc:scorecam": ("pytorch_grad_cam", _pgc_explainer, {"cam_name": "ScoreCAM"}),
    "pgc:eigencam": ("pytorch_grad_cam", _pgc_explainer, {"cam_name": "EigenCAM"}),
    "captum:ig": ("captum", _captum_ig_explainer, {}),
}
"""Peer-library adapters: name → (module that must import, factory, factory arguments)."""

_PEER_INFO = {"pgc:eigencam": (False, False)}  # (class_specific, signed); the others are class-specific


def list_peer_methods() -> list[str]:
    """Peer adapters whose library is installed."""
    import importlib.util

    return [name for name, (module, _, _) in PEER_METHODS.items() if importlib.util.find_spec(module) is not None]


def peer_explainer(name: str, **options: Any) -> Explainer:
    """The `Explainer` of a peer adapter ("pgc:gradcam", "captum:ig", ...)."""
    if name not in PEER_METHODS:
        raise ValueError(f"unknown peer method '{name}'; available: {', '.join(PEER_METHODS)}")
    _, factory, args = PEER_METHODS[name]
    return factory(**args, **options)


# ----------------------------------------------------------------------------- leaderboard


@dataclass
class Leaderboard:
    """Rows sorted by trait_energy (best first), a bar figure, and the full `EvalResults`.

    Rows whose maps come from different models carry the model's name and accuracy (`model`, `model_acc`), so a
    table never ranks maps of a weak model against those of a strong one without saying so.

    Attributes:
        rows: per method: method, model, model_acc, source, class_specific, signed, one value per column
            (+ "<col>_ci"), s_per_img.
        columns: the metric columns present, in order; `directions[col]` is "higher" or "lower".
        png: the figure (trait energy and trait pointing game per method, with 95 % CIs).
        results: the underlying `EvalResults` (per-image values, knobs).
    """

    rows: list[dict[str, Any]]
    columns: list[str]
    directions: dict[str, str]
    png: bytes
    results: EvalResults
    knobs: dict[str, Any] = field(default_factory=dict)

    def to_markdown(self) -> str:
        arrows = {"higher": "↑", "lower": "↓"}
        head = ["method", "model", "model acc", "source", *(f"{c} {arrows[self.directions[c]]}" for c in self.columns),
                "s/img"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [r["method"], r.get("model", "–"), _fmt(r.get("model_acc")), r["source"]]
            cells += [_fmt(r.get(c)) for c in self.columns]
            cells.append(f"{r['s_per_img']:.4f}" if r.get("s_per_img") is not None else "–")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _fmt(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def leaderboard_table(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """(header, rows) for `HtmlReport.table`: method, model, model accuracy, source, every metric column, s/img."""
    if not rows:
        return ["method"], []
    cols = [c for c in COLUMNS if c in rows[0]]
    arrows = {"higher": "↑", "lower": "↓"}
    header = ["method", "model", "model acc", "source", *(f"{c} {arrows[COLUMNS[c][1]]}" for c in cols), "s/img"]
    body = [[r["method"], r.get("model", "–"), r.get("model_acc", math.nan), r["source"], *(r[c] for c in cols),
             "–" if r.get("s_per_img") is None else f"{r['s_per_img']:.4f}"] for r in rows]
    return header, body


def _supports_native(model: nn.Module, x: torch.Tensor) -> bool:
    try:
        get_method("native")
        explain(model, x[:1], method="native")
    except Exception as err:  # not an interpretable model (or no native method registered yet)
        log.info("no native maps for this model: %s", err)
        return False
    return True


def _metric_options(size: int, steps: int | None, tol: float | None) -> dict[str, dict[str, Any]]:
    tol = tol if tol is not None else max(1, round(15 * size / 224))  # TorchRay's 15 px at 224, scaled
    opts: dict[str, dict[str, Any]] = {
        "pointing_game@trait": {"tol": tol},
        "energy_pointing_game@trait": {"sign": "positive"},
        "energy_pointing_game@object": {"sign": "positive"},
        "mask_overlap@trait": {"tau": "area"},
    }
    if steps is not None:
        opts["deletion"] = {"steps": steps}
        opts["insertion"] = {"steps": steps}
    return opts


def leaderboard(
    model: nn.Module,
    dataset: Dataset,
    methods: Sequence[str] | None = None,
    *,
    peers: Sequence[str] | None = None,
    peer_options: Mapping[str, Mapping[str, Any]] | None = None,
    native: bool | str = "auto",
    columns: Sequence[str] | None = None,
    n_images: int | None = None,
    batch_size: int = 16,
    steps: int | None = None,
    tol: float | None = None,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    out: str | Path | None = None,
    n_boot: int = 1000,
    progress: bool = True,
    native_models: Mapping[str, nn.Module] | None = None,
    model_name: str = "model",
    accuracies: Mapping[str, float] | None = None,
) -> Leaderboard:
    """Score methods against TraitShapes trait masks and for faithfulness, on one trained model.

    Args:
        model: the trained classifier (a timm ViT; or an interpretable model, whose "native" maps are added).
        dataset: a TraitShapes split (a `TraitShapesConfig` as `.config`), e.g. `materialize(TraitShapes(...))`.
        methods: registry names; default every method for ViTs.
        peers: peer adapters (`list_peer_methods()`); default all installed; [] for none.
        peer_options: peer → adapter options (e.g. {"captum:ig": {"n_steps": 16}}).
        native: add `explain(model, x, method="native")` rows: "auto" (when it works), True or False.
        columns: leaderboard columns (keys of `COLUMNS`); default all.
        n_images: the first N images; default all.
        steps: deletion/insertion steps (default the RISE reference: one row of pixels per step).
        tol: pointing-game tolerance in px (default 15 px scaled from 224 px to the image size).
        out: folder for the evaluation files (and resumable cache).
        native_models: name → interpretable model (e.g. Prompt-CAM on this backbone) whose own maps are added as
            rows "<name>:native"; their faithfulness columns are measured on that model.
        model_name: the name `model`'s rows carry in the `model` column.
        accuracies: model name (`model_name` or a `native_models` key) → its top-1 accuracy, e.g. on a whole test
            split; a model not named here is scored on the leaderboard's own images.

    Returns:
        A `Leaderboard`; every explanation targets the GT label.
    """
    if trait_info(dataset) is None:
        raise ValueError("the leaderboard needs TraitShapes trait masks: an in-memory TraitShapes split or its CUB "
                         "export read back with CUBDataset (traits.json)")
    cols = list(columns or COLUMNS)
    unknown = [c for c in cols if c not in COLUMNS]
    if unknown:
        raise ValueError(f"unknown columns {unknown}; choose from {list(COLUMNS)}")
    first = dataset[0]["image"]
    size = int(first.shape[-1])
    from traitlens.backbones.preprocess import normalize

    x0 = normalize(model, first[None].to(next(model.parameters()).device))
    names = list(methods) if methods is not None else [m.name for m in list_methods(family="vit")
                                                        if m.name != "native"]
    if native is True or (native == "auto" and "native" not in names and _supports_native(model, x0)):
        names.append("native")
    peer_names = list(peers) if peers is not None else list_peer_methods()
    explainers = {p: peer_explainer(p, **(peer_options or {}).get(p, {})) for p in peer_names}
    metric_labels = [COLUMNS[c][0] for c in cols if c != "ins_minus_del"]
    metrics = [("trait_precision" if lab == "contrast_ebpg" else lab) for lab in metric_labels]
    if "ins_minus_del" in cols:
        metrics += [m for m in ("deletion", "insertion") if m not in metrics]
    opts = _metric_options(size, steps, tol)
    res = evaluate(model, dataset, methods=[*names, *peer_names], metrics=metrics, out=out, batch_size=batch_size,
                   max_images=n_images, target="label", method_options=method_options, metric_options=opts,
                   explainers=explainers, n_boot=n_boot, progress=progress, plots=out is not None)
    accuracies = dict(accuracies or {})
    n_data = len(cast(Sized, dataset))
    scored = Subset(dataset, list(range(min(n_data, n_images or n_data))))
    rows = [{**r, "model": model_name, "model_acc": _accuracy(accuracies, model_name, model, scored)}
            for r in _rows(res, [*names, *peer_names], cols)]
    for label, net in (native_models or {}).items():
        sub = None if out is None else Path(out) / f"native-{label}"
        net_res = evaluate(net, dataset, methods=["native"], metrics=metrics, out=sub, batch_size=batch_size,
                           max_images=n_images, target="label", metric_options=opts, n_boot=n_boot,
                           progress=progress, plots=False)
        acc = _accuracy(accuracies, label, net, scored)
        rows += [{**row, "method": f"{label}:native", "model": label, "model_acc": acc}
                 for row in _rows(net_res, ["native"], cols)]
    key = "trait_energy" if "trait_energy" in cols else cols[0]
    rows.sort(key=lambda r: -np.nan_to_num(r.get(key, math.nan), nan=-np.inf))
    knobs = {"mask": "sibling-discriminative (datasets.md)", "samples": "(image, sibling) pairs", "target": "label",
             "metric_options": opts, "n_images": len(res.indices) if res.indices is not None else 0}
    directions = {c: COLUMNS[c][1] for c in cols}
    return Leaderboard(rows, cols, directions, _figure(rows), res, knobs)


def _accuracy(known: Mapping[str, float], name: str, model: nn.Module, dataset: Dataset) -> float:
    """`known[name]`, else the model's top-1 accuracy on `dataset`."""
    from traitlens.train import evaluate_accuracy

    return float(known[name]) if name in known else evaluate_accuracy(model, dataset)


def _rows(res: EvalResults, names: Sequence[str], cols: Sequence[str]) -> list[dict[str, Any]]:
    """One leaderboard row per method that produced results: metadata, column values with CIs, seconds/image."""
    rows = []
    for name in names:
        if name in res.skipped and not any(m == name for m, _ in res.results):
            log.warning("leaderboard: %s skipped (%s)", name, res.skipped[name])
            continue
        row: dict[str, Any] = {"method": name, **_method_meta(name)}
        for c in cols:
            r = res.row(name, COLUMNS[c][0])
            row[c] = math.nan if r is None else r["value"]
            row[f"{c}_ci"] = None if r is None else (r["ci_low"], r["ci_high"])
        row["s_per_img"] = res.timing.get(name)
        rows.append(row)
    return rows


def _method_meta(name: str) -> dict[str, Any]:
    if name in PEER_METHODS:
        cs, signed = _PEER_INFO.get(name, (True, name == "captum:ig"))
        return {"source": name.split(":")[0].replace("pgc", "pytorch-grad-cam"), "class_specific": cs,
                "signed": signed}
    try:
        info = get_method(name)
    except ValueError:
        return {"source": "traitlens", "class_specific": None, "signed": None}
    source = "native" if name == "native" else "traitlens"
    return {"source": source, "class_specific": info.class_specific, "signed": info.signed}


def _figure(rows: Sequence[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from traitlens.viz import figure_png

    panels = [c for c in ("trait_energy", "trait_pg", "contrast_energy", "ins_minus_del") if rows and c in rows[0]]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(3.3 * max(1, len(panels)), 0.28 * len(rows) + 1.2),
                             squeeze=False, sharey=True)
    names = [r["method"] for r in rows]
    for ax, col in zip(axes[0], panels, strict=False):
        vals = [np.nan_to_num(r[col], nan=0.0) for r in rows]
        lo = [max(v - (r[f"{col}_ci"][0] if r[f"{col}_ci"] and not math.isnan(r[f"{col}_ci"][0]) else v), 0)
              for v, r in zip(vals, rows, strict=True)]
        hi = [max((r[f"{col}_ci"][1] if r[f"{col}_ci"] and not math.isnan(r[f"{col}_ci"][1]) else v) - v, 0)
              for v, r in zip(vals, rows, strict=True)]
        ax.barh(range(len(rows)), vals, xerr=[lo, hi], capsize=2,
                color=[SOURCE_COLOURS.get(r["source"], OTHER_SOURCE_COLOUR) for r in rows])
        ax.set_yticks(range(len(rows)), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{col} {'↓' if COLUMNS[col][1] == 'lower' else '↑'}", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle("TraitShapes leaderboard (sibling-discriminative masks; colour = source)", fontsize=9)
    fig.tight_layout()
    return figure_png(fig)


def leaderboard_small(
    model: nn.Module,
    dataset: Dataset,
    methods: Sequence[str] | None = None,
    n_images: int = 32,
    *,
    peers: Sequence[str] | None = ("pgc:gradcam", "captum:ig"),
    steps: int = 16,
    batch_size: int = 32,
    exclude: Sequence[str] = ("tam", "smooth_cdam", "integrated_cdam", "smoothgrad", "integrated_gradients", "lrp"),
    native_models: Mapping[str, nn.Module] | None = None,
    model_name: str = "model",
    accuracies: Mapping[str, float] | None = None,
) -> tuple[list[dict[str, Any]], bytes]:
    """A quick leaderboard for the quickstart report: ~32 images, coarse deletion/insertion, no contrast column.

    The costliest methods (`exclude`: token ablation and the sampled/integrated ones, 50–65 passes per image) are
    left out unless named in `methods`; peer rows default to pytorch-grad-cam's GradCAM and captum's IG (16 steps).

    Returns:
        (rows, PNG bytes) — rows as in `Leaderboard.rows`.
    """
    if methods is None:
        methods = [m.name for m in list_methods(family="vit") if m.name not in exclude and m.name != "native"]
    available = set(list_peer_methods())
    lb = leaderboard(model, dataset, methods, peers=[p for p in (peers or []) if p in available],
                     peer_options={"captum:ig": {"n_steps": 16}},
                     columns=["trait_pg", "trait_energy", "trait_iou", "object_energy", "deletion", "insertion",
                              "ins_minus_del"],
                     n_images=n_images, batch_size=batch_size, steps=steps, n_boot=300, progress=False,
                     native_models=native_models, model_name=model_name, accuracies=accuracies)
    return lb.rows, lb.png
