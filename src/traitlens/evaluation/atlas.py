"""The trait atlas: which parts each class relies on across a data set, and what tells it from the classes it is
confused with (docs/atlas.md).

One pass over the data explains every image for all its targets at once: the true class A and its runner-up classes
(the highest-scoring other classes of that image). The positive evidence s_A⁺ is split over the part masks
(TraitShapes, CUB `part_masks/`, or disks around CUB part points) and the background, and each part's share is set
against its share of the image area (the lift), so a large background never wins by size. The confusion matrix
then names each class's most confused classes B; their "why A, not B" contrast (s_A − s_B)⁺ is split over the parts
the same way. Finally a few correctly classified exemplars per class are explained again for the overlays (and the
per-head maps, in ranked order, of models that have heads).

The pass is resumable like `evaluate`: one record per batch under `out/state`, so a killed run continues where it
stopped and gives the same files.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from traitlens._io import atomic_write
from traitlens.backbones.preprocess import normalize
from traitlens.evaluation._data import Batch, TraitInfo, load_batch, trait_info
from traitlens.evaluation.atlas_exemplars import add_exemplars
from traitlens.evaluation.atlas_state import AtlasState, dataset_labels, select_images, selection_digest
from traitlens.evaluation.atlas_types import Atlas, ClassAtlas, ConfusedPair, Exemplar
from traitlens.evaluation.cache import batch_key, model_fingerprint
from traitlens.evaluation.trait_report import _shares, part_disks
from traitlens.explain import IncompatibleMethodError, explain, get_method, method_refusal, upsample_maps
from traitlens.metrics import raw_pixel_maps

__all__ = ["Atlas", "ClassAtlas", "ConfusedPair", "Exemplar", "atlas", "confused_pairs", "part_evidence"]

log = logging.getLogger(__name__)


def part_evidence(pos: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split non-negative evidence over parts and the background, with each region's share of the image.

    Args:
        pos: [B,...,H,W] ≥ 0 (e.g. s⁺ of one or more maps per image).
        masks: [B,P,H,W] part masks; the background is the pixels outside every part.

    Returns:
        (shares [B,...,P+1], area [B,P+1]); the last column is the background. shares = Σ pos inside the region ÷
        Σ pos (NaN where Σ pos = 0); area = the region's pixels ÷ the image's pixels. Overlapping parts count
        their overlap in each.
    """
    m = masks.bool()
    area_parts = m.double().flatten(-2).mean(-1)
    area_bg = 1.0 - m.any(1).double().flatten(-2).mean(-1, keepdim=True)
    return _shares(pos, m), torch.cat([area_parts, area_bg], -1)


def lift_of(shares: torch.Tensor, area: torch.Tensor) -> torch.Tensor:
    """Mean share ÷ mean area over images (ratio of means: a tiny part in one image cannot blow it up); NaN where
    the mean area is 0. shares: [N,...,P+1] (NaN rows ignored), area: [N,P+1] broadcastable."""
    s = _nanmean(shares)
    a = area.double().mean(0) if len(area) else torch.full(s.shape, float("nan"), dtype=torch.float64)
    return torch.where(a > 0, s / torch.where(a > 0, a, torch.ones_like(a)), torch.full_like(s, float("nan")))


def _nanmean(x: torch.Tensor) -> torch.Tensor:
    if len(x) == 0:
        return torch.full(x.shape[1:], float("nan"), dtype=torch.float64)
    ok = ~torch.isnan(x)
    n = ok.sum(0)
    total = torch.where(ok, x, torch.zeros_like(x)).sum(0).double()
    return torch.where(n > 0, total / n.clamp_min(1), torch.full_like(total, float("nan")))


def top_part(lift: Mapping[str, float], parts: Sequence[str]) -> str | None:
    """The part with the highest finite lift (ties → the earlier part); the background is never ranked."""
    best: tuple[float, str] | None = None
    for p in parts:
        v = lift.get(p, float("nan"))
        if np.isfinite(v) and (best is None or v > best[0]):
            best = (v, p)
    return None if best is None else best[1]


def confused_pairs(confusion: torch.Tensor | np.ndarray, k: int,
                   soft: torch.Tensor | np.ndarray | None = None) -> dict[int, list[int]]:
    """The k classes each true class is most confused with, from a confusion matrix.

    Args:
        confusion: [C_true, C_pred] counts (rows: true class).
        k: classes per row.
        soft: optional [C_true, C_pred] mean predicted probabilities. Without it only classes with a count > 0 are
            listed; with it, ties in count are broken by it and rows are filled up to k with never-predicted classes
            in order of probability (the nearest classes of a class the model never confuses).

    Returns:
        {true class: [class B, ...]} for every row with at least one image, most confused first (count descending,
        then `soft` descending, then class index); the row's own class is never listed.
    """
    cm = torch.as_tensor(np.asarray(confusion), dtype=torch.float64)
    sf = None if soft is None else torch.as_tensor(np.asarray(soft), dtype=torch.float64)
    out: dict[int, list[int]] = {}
    for a in range(cm.shape[0]):
        if cm[a].sum() <= 0:
            continue
        keys = []
        for b in range(cm.shape[1]):
            if b == a or (sf is None and cm[a, b] <= 0):
                continue
            keys.append((-float(cm[a, b]), -float(sf[a, b]) if sf is not None else 0.0, b))
        out[a] = [b for *_, b in sorted(keys)[:k]]
    return out


# ----------------------------------------------------------------------------- the pass over the data


def _radius(model: nn.Module, H: int, point_radius: float | None) -> float:
    if point_radius:
        return float(point_radius)
    for m in (model, getattr(model, "backbone", None)):
        patch = getattr(getattr(m, "patch_embed", None), "patch_size", None)
        if patch:
            return float(patch[0] if isinstance(patch, (tuple, list)) else patch)
    return H / 16


def _masks(batch: Batch, radius: float) -> torch.Tensor | None:
    if batch.part_masks is not None:
        return batch.part_masks
    if batch.parts is not None:
        return part_disks(batch.parts, (batch.images01.shape[-2], batch.images01.shape[-1]), radius)
    return None


def _explain_batch(model: nn.Module, device: torch.device, batch: Batch, method: str, options: Mapping[str, Any],
                   n_runners: int, radius: float) -> dict[str, torch.Tensor]:
    """One batch's record: labels, predictions, probabilities, runner-up targets and the part shares."""
    if batch.labels is None:
        raise ValueError("the atlas needs labelled items (a 'label' per image)")
    x = normalize(model, batch.images01.to(device))
    with torch.no_grad():
        logits = model(x).detach()
    labels = batch.labels.to(logits.device)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    runners = others.topk(n_runners, 1).indices if n_runners else labels[:, :0]
    exp = explain(model, x, method=method, target=torch.cat([labels[:, None], runners], 1), **options)
    rec = {"indices": batch.indices, "labels": batch.labels, "preds": logits.argmax(1).cpu(),
           "probs": logits.float().softmax(1).cpu(), "runners": runners.cpu()}
    masks = _masks(batch, radius)
    if masks is not None:
        raw = raw_pixel_maps(exp).detach().double().cpu()
        rec["share"], rec["area"] = part_evidence(raw[:, 0].clamp_min(0), masks)
        if n_runners:
            rec["contrast"] = _shares((raw[:, :1] - raw[:, 1:]).clamp_min(0), masks)
        if exp.head_maps is not None:
            up = upsample_maps(exp.head_maps[:, 0].detach().double().cpu(), (raw.shape[-2], raw.shape[-1]), "nearest")
            rec["heads"] = _shares(up.clamp_min(0), masks)
    return rec


def atlas(
    model: nn.Module,
    dataset: Dataset,
    method: str = "cdam",
    out: str | Path | None = None,
    *,
    classes: Sequence[int | str] | None = None,
    max_per_class: int | None = None,
    confused: int = 2,
    exemplars: int = 3,
    batch_size: int = 16,
    method_options: Mapping[str, Any] | None = None,
    part_names: Sequence[str] | None = None,
    point_radius: float | None = None,
    model_name: str | None = None,
    resume: bool = True,
    progress: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
) -> Atlas:
    """The trait atlas of `model` over `dataset`: part shares and lifts per class, confused pairs and their
    contrasts, exemplars (docs/atlas.md).

    Args:
        model: any classifier (eval mode) the method runs on (`method_refusal`); "native" needs Prompt-CAM, INTR
            or SCOUTER.
        dataset: labelled dict items (`image` [3,H,W] in [0,1], `label`); part masks (`part_masks`) or part points
            (`parts`) give the part columns, which are absent otherwise (ImageFolder).
        method: a registry method or "native".
        out: folder for `atlas.json`, `classes.csv`, `pairs.csv`, `heads.csv`, `exemplars/` and the resumable
            `state/`; None keeps everything in memory. The HTML pages: `traitlens.report.write_atlas_html`.
        classes: only these classes (indices or names); default all.
        max_per_class: at most this many images per class (the first ones in dataset order); default all.
        confused: confused classes per class, and runner-up targets explained per image.
        exemplars: correctly classified images shown per class.
        batch_size: images per explanation call.
        method_options: options for `explain` (e.g. {"head_fusion": "max"}).
        part_names: part column names; default the dataset's `part_names`, else TraitShapes' parts.
        point_radius: disk radius (px) around part points when there are no part masks; default the patch size.
        model_name: the name recorded for the model (default its class name).
        resume: continue an interrupted run in `out` with the same settings; False starts over. A resume with
            other settings (model weights, method, images, ...) is refused with `AtlasResumeError`.
        on_batch: called as `on_batch(done, total)` after every batch.

    Returns:
        An `Atlas` (also written to `out` when given).

    Example:
        >>> at = atlas(model, test_set, "cdam", out="runs/atlas", max_per_class=20)  # doctest: +SKIP
        >>> at.hit_fraction  # TraitShapes: classes whose top-lift part is a discriminative part  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    why = method_refusal(model, method)
    if why is not None:
        raise IncompatibleMethodError(why)
    info = get_method(method)
    options = dict(method_options or {})
    out_dir = Path(out) if out is not None else None
    device = next(model.parameters()).device
    n_classes = int(getattr(model, "num_classes", 0) or 0)
    names = list(getattr(dataset, "classes", None) or getattr(model, "class_names", None) or [])
    labels = dataset_labels(dataset)
    if not n_classes:
        raise ValueError(f"{type(model).__name__} does not say its number of classes (num_classes)")
    if labels and max(labels) >= n_classes:
        raise ValueError(f"the data has label {max(labels)} but the model has {n_classes} classes")
    names = [names[c] if c < len(names) else str(c) for c in range(n_classes)]
    chosen = None if classes is None else _class_ids(classes, names)
    indices = select_images(labels, chosen, max_per_class)
    if not indices:
        raise ValueError("no image of the chosen classes in the data")
    traits = trait_info(dataset)
    n_runners = min(confused, n_classes - 1) if info.class_specific else 0
    if not info.class_specific:
        log.warning("%s is not class-specific: no contrast maps (they would be all zero)", method)
    fp = model_fingerprint(model)
    state = AtlasState(out_dir, {"fingerprint": fp, "method": method, "options": options, "confused": n_runners,
                                 "batch_size": batch_size, "point_radius": point_radius,
                                 "selection": selection_digest(indices, labels)}, resume)
    starts = list(range(0, len(indices), batch_size))
    records, seconds, timed = [], 0.0, 0
    bar = tqdm(total=len(indices), desc=f"atlas {method}", unit="img", disable=not progress)
    for n_done, start in enumerate(starts, 1):
        idx = indices[start:start + batch_size]
        batch = load_batch(dataset, idx, traits)
        key = batch_key(batch)
        rec = state.load(idx, key)
        if rec is None:
            t0 = time.perf_counter()
            radius = _radius(model, batch.images01.shape[-2], point_radius)
            rec = _explain_batch(model, device, batch, method, options, n_runners, radius)
            seconds += time.perf_counter() - t0
            timed += len(idx)
            state.save(idx, key, rec)
            bar.set_postfix_str(f"{seconds / timed:.3f} s/img")
        records.append(rec)
        bar.update(len(idx))
        if on_batch is not None:
            on_batch(n_done, len(starts))
    bar.close()
    if timed:
        log.info("atlas: %.4f s per image (%d images explained by %s this run)", seconds / timed, timed, method)
    parts = _part_names(records, part_names, dataset)
    result = _aggregate(records, parts, names, traits, confused)
    result.update(model=model_name or type(model).__name__, fingerprint=fp, method=method, method_options=options,
                  signed=info.signed, contrast=bool(n_runners))
    res = Atlas(**result)
    res.seconds_per_image = seconds / timed if timed else None
    add_exemplars(res, model, device, dataset, records, traits, exemplars, options)
    if out_dir is not None:
        res.write(out_dir)
        if timed:
            text = json.dumps({"seconds_per_image": seconds / timed, "images_timed": timed, "method": method})
            atomic_write(out_dir / "timing.json", lambda p: p.write_text(text + "\n"))
    return res


def _class_ids(classes: Sequence[int | str], names: Sequence[str]) -> list[int]:
    """Class indices from indices or names; a name that is neither fails with the known names."""
    out = []
    for c in classes:
        if isinstance(c, int) or (isinstance(c, str) and c.strip().isdigit() and c.strip() not in names):
            i = int(c)
            if not 0 <= i < len(names):
                raise ValueError(f"class index {i} out of range for {len(names)} classes")
            out.append(i)
        elif c in names:
            out.append(names.index(c))
        else:
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise ValueError(f"unknown class {c!r}; the classes are {shown}")
    return out


def _part_names(records: list[dict[str, torch.Tensor]], given: Sequence[str] | None, dataset: Dataset) -> list[str]:
    if "share" not in records[0]:
        return []
    from traitlens.data.traitshapes import PART_NAMES

    n = records[0]["share"].shape[-1] - 1
    names = list(given or getattr(dataset, "part_names", None) or PART_NAMES)
    return [names[p] if p < len(names) else f"part{p}" for p in range(n)]


def _aggregate(records: list[dict[str, torch.Tensor]], parts: list[str], names: list[str],
               traits: TraitInfo | None, n_confused: int) -> dict[str, Any]:
    """The class rows, pairs, head rows and the confusion matrix from the batch records (in pass order)."""
    cat = {k: torch.cat([r[k] for r in records]) for k in records[0]}
    labels, preds, C = cat["labels"].long(), cat["preds"].long(), len(names)
    cols = [*parts, "background"] if parts else []
    confusion = torch.bincount(labels * C + preds, minlength=C * C).view(C, C)
    soft = torch.zeros(C, C, dtype=torch.float64)
    soft.index_add_(0, labels, cat["probs"].double())
    soft /= confusion.sum(1, keepdim=True).clamp_min(1)
    pairs = confused_pairs(confusion, n_confused, soft)

    def as_dict(v: torch.Tensor) -> dict[str, float]:
        return {p: float(x) for p, x in zip(cols, v, strict=True)}

    rows = []
    for a in sorted(pairs):
        sel = labels == a
        row = ClassAtlas(a, names[a], int(sel.sum()), int((preds[sel] == a).sum()))
        if cols:
            row.shares, row.area = as_dict(_nanmean(cat["share"][sel])), as_dict(cat["area"][sel].mean(0))
            row.lift = as_dict(lift_of(cat["share"][sel], cat["area"][sel]))
            row.top_part = top_part(row.lift, parts)
        if traits is not None and cols:
            row.expected = sorted({traits.slot_parts[s] for _, s in traits.siblings.get(a, [])} & set(parts))
            row.hit = (row.top_part in row.expected) if row.expected else None
        for b in pairs[a]:
            pair = ConfusedPair(b, names[b], int(confusion[a, b]), float(confusion[a, b]) / row.n, float(soft[a, b]))
            if "contrast" in cat:
                where = (cat["runners"] == b) & sel[:, None]  # [N, m]: images of A explained against B
                img, slot = where.nonzero(as_tuple=True)
                pair.n_contrast = len(img)
                if cols and len(img):
                    shares = cat["contrast"][img, slot]
                    pair.shares, pair.lift = as_dict(_nanmean(shares)), as_dict(lift_of(shares, cat["area"][img]))
                    pair.top_part = top_part(pair.lift, parts)
            if traits is not None and cols:
                ta, tb = traits.class_traits[a], traits.class_traits[b]
                pair.expected = sorted({traits.slot_parts[j] for j in range(len(ta)) if ta[j] != tb[j]} & set(parts))
                pair.hit = (pair.top_part in pair.expected) if pair.expected and pair.top_part else None
            row.confused.append(pair)
        rows.append(row)
    heads = []
    if "heads" in cat:
        for r in range(cat["heads"].shape[1]):
            lift = as_dict(lift_of(cat["heads"][:, r], cat["area"]))
            heads.append({"head": r, "shares": as_dict(_nanmean(cat["heads"][:, r])), "lift": lift,
                          "top_part": top_part(lift, parts)})
    judged = [r.hit for r in rows if r.hit is not None]
    return {"parts": parts, "classes": rows, "class_names": names, "confusion": confusion.tolist(), "heads": heads,
            "n_images": len(labels), "accuracy": float((labels == preds).double().mean()),
            "hit_fraction": (sum(judged) / len(judged)) if judged else None, "n_hit_classes": len(judged)}
