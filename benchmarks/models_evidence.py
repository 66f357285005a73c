"""Evidence for the interpretable models on TraitShapes (issue #4): accuracy, trait pointing, SCOUTER area, heads.

Measures, on a small CPU budget and with **one** tiny ViT backbone for everything:

1. accuracy of Prompt-CAM, INTR and SCOUTER (`traitlens.models`, trained with `traitlens.train.fit` and
   `recommended_fit_config(kind, "quick")`) next to a linear probe and a fine-tune of the same backbone
   (`FitConfig(mode="linear" | "finetune")`, the `traitlens train linear|finetune` recipe);
2. the trait pointing game of each model's native maps (`explain(net, x, method="native")`, target = the label):
   is the argmax of the pixel map inside the union of the image's class trait masks (the TraitShapes class mask),
   against chance = the mean fraction of the image that mask covers; also on the sibling-discriminative mask
   (the one part telling the class from a sibling, datasets.md "Scoring"). The hit test is
   `traitlens.metrics.localisation.pointing_game` with tol = 0 (metrics.md §3.1), pooled over samples ('micro');
3. SCOUTER's explained area (metrics.md §3.5, models.md §3.3: the mean of the 'joint' min-max normalised map of the
   ground-truth class) for several λ (`lambda_area`), and whether it shrinks monotonically as λ grows;
4. which TraitShapes part each Prompt-CAM / INTR head prefers (`traitlens.evaluation.trait_report`, per head).

Data: the backbone is pre-trained (the quickstart recipe, `QuickstartConfig`: 64 px, AdamW, one-cycle, flips and
shifts) on the TraitShapes splits "train"/"val". Its architecture is `traitlens-vit-tiny-gap`, the quickstart ViT pooled
by the mean of its patch tokens: Prompt-CAM Deep reads the patch tokens entering the last block, and a class-token ViT
has moved the class evidence into its CLS token by then (docs/models_evidence.md); --backbone-preset
traitlens-vit-tiny trains the quickstart's own class-token ViT instead; everything else trains and is measured on the
splits "evidence-train", "evidence-val" and "evidence-test" of the same classes. TraitShapes seeds each image by (seed,
crc32(split), index), so these are different images of the same classes.

Run (--jobs 2 trains two models at a time, one torch thread each; on an idle 2-core machine the command below takes
~12 min with a given backbone, and pre-training one here adds ~6 min):

    python benchmarks/models_evidence.py --out runs/models_evidence [--backbone runs/gap/best] --train 3200 \
        --epochs 16 --scouter-renorm none --promptcam-variants deep,shallow --promptcam-epochs 48 --jobs 2

Budget flags: --backbone-train/--backbone-epochs (pre-training), --train/--val/--test (evidence images),
--epochs (interpretable models), --scouter-epochs/--scouter-lr, --baseline-epochs, --eval-images,
--report-images, --removal-images, --lambdas; --scouter-vit-block/--intr-vit-block pick the ViT block the models
read (-1 the last); --promptcam-variants takes deep, shallow and interpolatedI (class prompts from block I);
--only KIND[,...] trains a subset; --scouter-renorm abs switches
SCOUTER's renormalisation (the reference one can collapse training: D·ΣD/row-sum explodes near zero row sums).
Writes OUT/results.json and OUT/results.md and prints the Markdown tables.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("models_evidence")

BACKBONE_SPLITS = ("train", "val")  # the quickstart's splits: the backbone never sees an evidence image
EVIDENCE_SPLITS = ("evidence-train", "evidence-val", "evidence-test")
INTERPRETABLE = ("promptcam", "intr", "scouter")
BASELINES = ("linear", "finetune")


# ----------------------------------------------------------------------------- pure logic (unit-tested)


def pointing_samples(maps: torch.Tensor, class_masks: torch.Tensor, disc_masks: torch.Tensor | None = None,
                     object_masks: torch.Tensor | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-sample trait pointing hits and the chance of each sample.

    Args:
        maps: [B,H,W] one map per image (the explained class).
        class_masks: bool [B,H,W], the union of the image's class trait masks.
        disc_masks: bool [B,S,H,W] sibling-discriminative masks; an empty mask (padding, crest-less image) is
            no sample.
        object_masks: bool [B,H,W] the whole critter (context: a map that merely finds the object also beats
            the uniform chance of the class mask).

    Returns:
        {"class": (hits [B], fractions [B]), "trait": (hits [B·S], fractions [B·S]), "object": ...}: hit 1/0 from
        `pointing_game(tol=0)` (the first maximal pixel lies inside the mask), the fraction of the image the mask
        covers (= the hit probability of a uniformly random point); NaN for empty masks in both.
    """
    from traitlens.metrics.localisation import pointing_game

    out = {}
    pairs = {"class": class_masks[:, None]}
    if disc_masks is not None:
        pairs["trait"] = disc_masks
    if object_masks is not None:
        pairs["object"] = object_masks[:, None]
    for name, masks in pairs.items():
        masks = masks.bool()
        B, K = masks.shape[:2]
        res = pointing_game(maps[:, None].expand(B, K, *maps.shape[-2:]), masks, tol=0, aggregate="micro")
        frac = masks.flatten(-2).double().mean(-1)
        frac = torch.where(masks.flatten(-2).any(-1), frac, torch.full_like(frac, math.nan))
        out[name] = (res.values.flatten().double().cpu(), frac.flatten().cpu())
    return out


def summarise_pointing(hits: torch.Tensor, fractions: torch.Tensor) -> dict[str, float]:
    """Hit rate vs chance over the samples with a mask.

    chance = mean fraction covered; z = (Σ hits − Σ f) / √(Σ f(1−f)), the hit count's distance from a random
    point's expectation in units of its (Poisson-binomial) standard deviation.
    """
    keep = ~torch.isnan(hits) & ~torch.isnan(fractions)
    h, f = hits[keep].double(), fractions[keep].double()
    n = int(keep.sum())
    if n == 0:
        return {"n": 0, "hit_rate": math.nan, "chance": math.nan, "ratio": math.nan, "z": math.nan}
    var = float((f * (1 - f)).sum())
    z = float((h.sum() - f.sum()) / math.sqrt(var)) if var > 0 else math.nan
    hit, chance = float(h.mean()), float(f.mean())
    return {"n": n, "hit_rate": hit, "chance": chance, "ratio": hit / chance if chance > 0 else math.nan, "z": z}


def gt_class_area(maps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """SCOUTER explained area of the ground-truth class per image (metrics.md §3.5, models.md §3.3).

    maps [B,C,h,w] are the raw A_c; they are min-max normalised jointly over all classes of the image
    (`normalize_class_maps(..., "joint")`) and the label's map is averaged (`area_size`). Returns [B].
    """
    from traitlens.models import area_size, normalize_class_maps

    areas = area_size(normalize_class_maps(maps, "joint"))  # [B,C]
    return areas[torch.arange(len(labels)), labels.long().to(areas.device)]


def strictly_decreasing(values: Sequence[float]) -> bool:
    """True when every value is below the previous one (NaN anywhere: False)."""
    vals = list(values)
    return len(vals) >= 2 and all(b < a for a, b in itertools.pairwise(vals))


def head_preferences(head_rows: Sequence[dict[str, Any]], parts: Sequence[str],
                     areas: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Per head: its top region (may be 'background'), its top critter part and the shares, from trait-report rows.

    With `areas` (mean fraction of the image each part covers), also the part with the highest lift = share / area:
    the background covers most of the image, so raw shares favour it and large parts.
    """
    names = [p for p in parts if p != "background"]
    out = []
    for row in head_rows:
        shares = {p: float(row[p]) for p in names}
        finite = {p: v for p, v in shares.items() if not math.isnan(v)}
        top_part = max(finite, key=finite.get) if finite else ""
        pref = {"head": int(row["head_index"]), "top": row["top_part"],
                "top_share": float(row.get(row["top_part"], math.nan)),
                "top_part": top_part, "top_part_share": finite.get(top_part, math.nan),
                "background": float(row.get("background", math.nan))}
        if areas is not None:
            lift = {p: v / areas[p] for p, v in finite.items() if areas.get(p, 0) > 0}
            best = max(lift, key=lift.get) if lift else ""
            pref.update(top_lift_part=best, top_lift=lift.get(best, math.nan),
                        background_lift=pref["background"] / areas["background"] if areas.get("background") else
                        math.nan)
        out.append(pref)
    return out


def part_areas(dataset, n: int, parts: Sequence[str]) -> dict[str, float]:
    """Mean fraction of the image each part (and the background) covers over the first n images."""
    n = min(n, len(dataset))
    masks = torch.stack([dataset[i]["part_masks"] for i in range(n)]).double()  # [n,P,H,W]
    frac = masks.flatten(-2).mean(-1).mean(0)
    out = {p: float(f) for p, f in zip(parts, frac, strict=False) if p != "background"}
    out["background"] = float(1 - masks.amax(1).flatten(-2).mean(-1).mean())
    return out


# ----------------------------------------------------------------------------- data and backbone


@dataclass
class Data:
    train: Any
    val: Any
    test: Any


def make_config(args: argparse.Namespace):
    from traitlens.data.traitshapes import TraitShapesConfig

    return TraitShapesConfig(size=args.size, num_classes=args.classes, seed=args.seed)


def evidence_data(args: argparse.Namespace, workers: int, progress: bool = True) -> Data:
    from traitlens.data.traitshapes import TraitShapes, materialize

    cfg = make_config(args)
    sizes = (args.train, args.val, args.test)
    sets = [materialize(TraitShapes(cfg, split, n), workers, progress and args.progress) for split, n in
            zip(EVIDENCE_SPLITS, sizes, strict=True)]
    return Data(*sets)


def pretrain_backbone(args: argparse.Namespace, out: Path) -> tuple[Path, dict[str, Any]]:
    """The quickstart recipe on the backbone splits; returns the selected model directory and its record."""
    from traitlens.backbones import create_preset
    from traitlens.data.traitshapes import TraitShapes, materialize
    from traitlens.quickstart import QuickstartConfig
    from traitlens.train import fit

    cfg = make_config(args)
    train = materialize(TraitShapes(cfg, BACKBONE_SPLITS[0], args.backbone_train), 2, args.progress)
    val = materialize(TraitShapes(cfg, BACKBONE_SPLITS[1], args.backbone_val), 2, args.progress)
    torch.manual_seed(args.seed)
    model = create_preset(args.backbone_preset, args.classes, class_names=train.classes)
    log.info("pre-training %s on %d '%s' images for %d epochs", args.backbone_preset, len(train), BACKBONE_SPLITS[0],
             args.backbone_epochs)
    t0 = time.perf_counter()
    recipe = QuickstartConfig(epochs=args.backbone_epochs, lr=args.backbone_lr, seed=args.seed).vit_recipe()
    res = fit(model, train, val, recipe, out=out / "backbone", progress=args.progress)
    record = {"trained_here": True, "preset": args.backbone_preset, "splits": list(BACKBONE_SPLITS),
              "images": len(train), "epochs": args.backbone_epochs, "lr": args.backbone_lr,
              "best_val_acc": res.best_val_acc, "seconds": time.perf_counter() - t0}
    return Path(res.best_dir), record


def check_backbone(backbone_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """A given backbone must know the same classes, in the same order, at the same image size."""
    from traitlens.data.traitshapes import class_names

    config = json.loads((backbone_dir / "config.json").read_text())
    names = config.get("class_names")
    expected = class_names(make_config(args))
    if names is not None and list(names) != expected:
        raise SystemExit(f"{backbone_dir} was trained on classes {names}, not this TraitShapes config's {expected}; "
                         "pass matching --classes/--seed or omit --backbone")
    img = config.get("model_args", {}).get("img_size")
    if img is not None and int(img) != args.size:
        raise SystemExit(f"{backbone_dir} takes {img} px images; pass --size {img}")
    return {"trained_here": False, "dir": str(backbone_dir), "selected": config.get("selected")}


# ----------------------------------------------------------------------------- one training + measurement


@dataclass
class Task:
    """One model to train and measure. kind: linear | finetune | promptcam | intr | scouter."""

    name: str
    kind: str
    options: dict[str, Any] = field(default_factory=dict)


def tasks_for(args: argparse.Namespace) -> list[Task]:
    """Longest first, so two jobs finish close together."""
    intr_block = {"vit_block": args.intr_vit_block} if args.intr_vit_block != -1 else {}
    tasks = [Task("finetune", "finetune"), Task("intr", "intr", intr_block)]
    # renorm explicit: the quickstart's options (the base) choose another renorm
    extra = {"renorm": args.scouter_renorm, "vit_block": args.scouter_vit_block}
    tasks += [Task(f"scouter_lambda{lam:g}", "scouter", {"lambda_area": lam, **extra}) for lam in args.lambdas]
    agnostic = {"n_agnostic_prompts": args.promptcam_agnostic} if args.promptcam_agnostic else {}
    tasks += [Task("promptcam" if v == "deep" else f"promptcam_{v}", "promptcam",
                   {**agnostic, **_promptcam_variant(v)}) for v in args.promptcam_variants]
    tasks += [Task("linear", "linear")]
    if args.only:
        tasks = [t for t in tasks if t.kind in args.only or t.name in args.only]
    return tasks


def _promptcam_variant(name: str) -> dict[str, Any]:
    """'deep' → {}, 'shallow' → variant, 'interpolatedI' → class prompts from block I on."""
    if name == "deep":
        return {}
    if name.startswith("interpolated"):
        return {"variant": "interpolated", "class_from_block": int(name.removeprefix("interpolated"))}
    return {"variant": name}


def _fit_config(task: Task, args: argparse.Namespace):
    from traitlens.models import recommended_fit_config
    from traitlens.train import FitConfig

    if task.kind in BASELINES:
        # `traitlens train linear|finetune`: FitConfig(mode=...) defaults; the budget flags set epochs and lr
        lr = args.linear_lr if task.kind == "linear" else args.finetune_lr
        return FitConfig(mode=task.kind, epochs=args.baseline_epochs, lr=lr, seed=args.seed)
    overrides: dict[str, Any] = {"epochs": args.epochs, "seed": args.seed}
    if task.kind == "scouter":
        overrides.update({k: v for k, v in (("epochs", args.scouter_epochs), ("lr", args.scouter_lr)) if v})
    if task.kind == "promptcam" and args.promptcam_epochs:
        overrides["epochs"] = args.promptcam_epochs
    return recommended_fit_config(task.kind, "quick", **overrides)


def _build(task: Task, backbone_dir: Path, classes: list[str], seed: int):
    from traitlens.backbones import load_model
    from traitlens.models import build_interpretable
    from traitlens.quickstart import QUICK_MODEL_OPTIONS

    torch.manual_seed(seed)
    if task.kind in BASELINES:
        net = load_model(backbone_dir)
        net.reset_classifier(len(classes))  # a fresh head: the probe must not inherit the pre-trained one
        return net
    options = {**QUICK_MODEL_OPTIONS.get(task.kind, {}), **task.options}
    if task.kind == "scouter":
        options.setdefault("slot_seed", seed)
    return build_interpretable(task.kind, backbone_dir, len(classes), class_names=classes, **options)


@torch.no_grad()
def _scouter_area(net, dataset, n: int, batch_size: int = 256) -> dict[str, float]:
    from traitlens.backbones import normalize
    from traitlens.train.trainer import iterate_batches

    net.eval()
    areas, raw = [], []
    seen = 0
    for images, labels in iterate_batches(dataset, batch_size):
        if seen >= n:
            break
        images, labels = images[: n - seen], labels[: n - seen]
        seen += len(labels)
        maps = net.forward_maps(normalize(net, images)).maps
        areas.append(gt_class_area(maps, labels))
        raw.append(maps[torch.arange(len(labels)), labels].flatten(1).mean(1))
    a, r = torch.cat(areas).double(), torch.cat(raw).double()
    return {"area": float(a.mean()), "area_sem": float(a.std() / math.sqrt(len(a))),
            "raw_mean_attention": float(r.mean()), "n": len(a)}


def trait_pointing(net, dataset, n: int, batch_size: int = 128) -> dict[str, dict[str, float]]:
    """Native maps of the label on the first n images, scored on the class mask and the sibling masks."""
    from traitlens.backbones import normalize
    from traitlens.evaluation._data import load_batch, trait_info
    from traitlens.explain import explain

    traits = trait_info(dataset)
    net.eval()
    acc: dict[str, tuple[list, list]] = {"class": ([], []), "trait": ([], []), "object": ([], [])}
    for start in range(0, min(n, len(dataset)), batch_size):
        batch = load_batch(dataset, list(range(start, min(start + batch_size, n, len(dataset)))), traits)
        exp = explain(net, normalize(net, batch.images01), method="native", target=batch.labels)
        samples = pointing_samples(exp.maps[:, 0], batch.class_masks, batch.disc_masks, batch.masks)
        for key, (hits, frac) in samples.items():
            acc[key][0].append(hits)
            acc[key][1].append(frac)
    out = {k: summarise_pointing(torch.cat(h), torch.cat(f)) for k, (h, f) in acc.items()}
    # Given the point is on the critter, how often is it on a class trait, vs the traits' share of the critter?
    hits_c, frac_c = torch.cat(acc["class"][0]), torch.cat(acc["class"][1])
    hits_o, frac_o = torch.cat(acc["object"][0]), torch.cat(acc["object"][1])
    on = hits_o == 1
    out["class_given_object"] = {"n": int(on.sum()), "hit_rate": float(hits_c[on].mean()) if on.any() else math.nan,
                                 "chance": float((frac_c / frac_o).mean())}
    return out


def removal_matrix(net, dataset, n: int) -> dict[str, Any]:
    """Prompt-CAM trait removal (models.md §1.6): per trait slot, the attention-mass drop of each head of the label's
    prompt when the slot's part is blurred away; the head with the largest drop is the one that reads that trait."""
    from traitlens.backbones import normalize
    from traitlens.data.traitshapes import SLOT_PARTS
    from traitlens.models import trait_head_matrix

    n = min(n, len(dataset))
    items = [dataset[i] for i in range(n)]
    images = normalize(net, torch.stack([it["image"] for it in items]))
    labels = torch.stack([torch.as_tensor(it["label"]) for it in items])
    masks = torch.stack([it["trait_masks"] for it in items])
    drop, score = trait_head_matrix(net, images, labels, masks)
    slots = [SLOT_PARTS[s] for s in dataset.config.slots]
    return {"parts": slots, "mass_drop": drop.tolist(), "score_drop": score.tolist(),
            "head_top_part": [slots[int(i)] for i in drop.argmax(0)], "n": n}


def run_task(task: Task, backbone_dir: Path, args: argparse.Namespace, data: Data, out: Path) -> dict[str, Any]:
    """Train one model (selection on evidence-val) and measure it on evidence-test."""
    from traitlens.backbones import load_model
    from traitlens.evaluation import trait_report
    from traitlens.train import evaluate_accuracy, fit

    classes = list(data.train.classes)
    net = _build(task, backbone_dir, classes, args.seed)
    cfg = _fit_config(task, args)
    log.info("%s: training %d epochs on %d images (%s)", task.name, cfg.epochs, len(data.train),
             {k: v for k, v in asdict(cfg).items() if k in ("mode", "optimizer", "lr", "schedule", "batch_size")})
    t0 = time.perf_counter()
    res = fit(net, data.train, data.val, cfg, out=out / task.name, progress=args.progress and args.jobs == 1)
    seconds = time.perf_counter() - t0
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    total = sum(p.numel() for p in net.parameters())
    if res.best_dir is not None:  # selection on the validation split (the quick recipes' and the CLI's rule)
        net = load_model(res.best_dir)
    net.eval()
    record: dict[str, Any] = {
        "name": task.name, "kind": task.kind, "options": task.options, "trainable_params": trainable,
        "total_params": total, "train_seconds": seconds, "best_val_acc": res.best_val_acc,
        "selected": json.loads((Path(res.best_dir) / "config.json").read_text()).get("selected")
        if res.best_dir else "last",
        "history": res.history, "fit": {k: v for k, v in asdict(cfg).items() if k != "num_workers"},
        "test_acc": evaluate_accuracy(net, data.test),
    }
    log.info("%s: test accuracy %.3f after %.0f s", task.name, record["test_acc"], seconds)
    if task.kind in INTERPRETABLE:
        record["pointing"] = trait_pointing(net, data.test, args.eval_images)
        log.info("%s: trait pointing %s", task.name, record["pointing"])
    if task.kind == "scouter":
        record["area"] = _scouter_area(net, data.test, args.eval_images)
        log.info("%s: explained area %s", task.name, record["area"])
    if task.kind in ("promptcam", "intr"):  # the models with heads
        rep = trait_report(net, data.test, method="native", n_images=args.report_images, batch_size=64)
        record["part_areas"] = part_areas(data.test, args.report_images, rep.parts)
        record["heads"] = head_preferences(rep.head_rows, rep.parts, record["part_areas"])
        record["class_rows"] = [{k: v for k, v in r.items()} for r in rep.rows]
        record["parts"] = rep.parts
    if task.kind == "promptcam" and args.removal_images and task.name == "promptcam":
        record["removal"] = removal_matrix(net, data.test, args.removal_images)
        log.info("%s: trait removal %s", task.name, record["removal"])
    return record


_WORKER: dict[str, Any] = {}


def _worker_init(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(processName)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    _WORKER["data"] = evidence_data(args, workers=0, progress=False)  # no process pool inside a pool worker


def _worker_run(task: Task, backbone_dir: Path, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    return run_task(task, backbone_dir, args, _WORKER["data"], out)


# ----------------------------------------------------------------------------- report


def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown(summary: dict[str, Any]) -> str:
    recs = {r["name"]: r for r in summary["models"]}
    lines = ["## Accuracy on evidence-test (same backbone for every row)", "",
             "| model | trainable / total params | epochs | test acc | best val acc | train s |",
             "|---|---|---|---|---|---|"]
    bb = summary.get("backbone_as_is")
    if bb is not None:
        lines.append(f"| backbone as pre-trained (own head, no training here) | – | – | {_f(bb)} | – | – |")
    for r in summary["models"]:
        lines.append(f"| {r['name']} | {r['trainable_params']:,} / {r['total_params']:,} | {r['fit']['epochs']} | "
                     f"{_f(r['test_acc'])} | {_f(r['best_val_acc'])} | {r['train_seconds']:.0f} |")
    lines += ["", "## Trait pointing game of the native maps (target = label, argmax inside the mask, tol 0)", "",
              "| model | class mask: hit | chance | ×chance | z | sibling trait mask: hit | chance | ×chance | z | "
              "on critter: hit | chance | class mask given on critter: hit | chance | n |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["models"]:
        if "pointing" not in r:
            continue
        p = r["pointing"]
        c, t, o, g = p["class"], p["trait"], p["object"], p["class_given_object"]
        lines.append(f"| {r['name']} | {_f(c['hit_rate'])} | {_f(c['chance'])} | {_f(c['ratio'], 2)} | "
                     f"{_f(c['z'], 1)} | {_f(t['hit_rate'])} | {_f(t['chance'])} | {_f(t['ratio'], 2)} | "
                     f"{_f(t['z'], 1)} | {_f(o['hit_rate'])} | {_f(o['chance'])} | {_f(g['hit_rate'])} | "
                     f"{_f(g['chance'])} | {c['n']} / {t['n']} |")
    lines.append("\nchance = mean fraction of the image the mask covers (a uniformly random point); z = (hits − Σ "
                 "fractions) / √Σ f(1−f). 'given on critter': among maps whose peak is on the critter, the share on "
                 "a class trait, vs the mean share of the critter those traits cover.")
    sc = summary["scouter_lambda"]
    lines += ["", "## SCOUTER explained area vs λ (GT class, 'joint' min-max, mean over images)", "",
              "| λ | explained area | ± s.e.m. | raw mean A_y | test acc | class-mask hit |",
              "|---|---|---|---|---|---|"]
    for row in sc["rows"]:
        lines.append(f"| {row['lambda']:g} | {_f(row['area'])} | {_f(row['area_sem'])} | "
                     f"{_f(row['raw_mean_attention'])} | {_f(row['test_acc'])} | {_f(row['class_hit'])} |")
    lines.append(f"\nArea strictly decreasing in λ: **{sc['monotone']}**")
    lines += ["", "## Preferred part per head (trait report: share of positive native saliency per part)", "",
              "| model | head | top region | share | top critter part | share | background share | "
              "top part by lift (share / area) | lift | background lift |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["models"]:
        for h in r.get("heads", []):
            lines.append(f"| {r['name']} | {h['head']} | {h['top']} | {_f(h['top_share'])} | {h['top_part']} | "
                         f"{_f(h['top_part_share'])} | {_f(h['background'])} | {h.get('top_lift_part', '–')} | "
                         f"{_f(h.get('top_lift'), 2)} | {_f(h.get('background_lift'), 2)} |")
    areas = next((r["part_areas"] for r in summary["models"] if "part_areas" in r), None)
    if areas:
        lines.append("\nMean image fraction per part: " + ", ".join(f"{k} {v:.3f}" for k, v in areas.items()))
    removal = recs.get("promptcam", {}).get("removal")
    if removal:
        R = len(removal["mass_drop"][0])
        lines += ["", "## Prompt-CAM trait removal: attention-mass drop per head when a part is blurred away "
                  f"({removal['n']} images)", "",
                  "| part | score drop | " + " | ".join(f"head {r}" for r in range(R)) + " |", "|---|---|" + "---|" * R]
        for part, sd, row in zip(removal["parts"], removal["score_drop"], removal["mass_drop"], strict=True):
            lines.append(f"| {part} | {sd:.3f} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
        lines.append(f"\nPart whose removal drops each head's mass most: {removal['head_top_part']}")
    lines += ["", f"Command: `{summary['command']}`  ", f"Wall time: {summary['wall_seconds']:.0f} s; backbone: "
              f"{json.dumps(summary['backbone'])}"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from traitlens.quickstart import QuickstartConfig

    qs = QuickstartConfig  # the backbone defaults are the quickstart's recipe, from its one definition
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/models_evidence"))
    p.add_argument("--backbone", type=Path, default=None,
                   help="a saved traitlens-vit-tiny(-gap) trained on the backbone splits (the quickstart's "
                        "traitlens-quickstart/run/best is the class-token one); default: pre-train --backbone-preset")
    p.add_argument("--backbone-preset", choices=["traitlens-vit-tiny-gap", "traitlens-vit-tiny"],
                   default="traitlens-vit-tiny-gap",
                   help="the architecture pre-trained here: patch-mean pooled (default; Prompt-CAM Deep reads the "
                        "patch tokens) or the quickstart's class-token ViT")
    p.add_argument("--classes", type=int, default=qs.num_classes)
    p.add_argument("--size", type=int, default=qs.size)
    p.add_argument("--seed", type=int, default=qs.seed)
    p.add_argument("--backbone-train", type=int, default=qs.n_train)
    p.add_argument("--backbone-val", type=int, default=qs.n_val)
    p.add_argument("--backbone-epochs", type=int, default=qs.epochs)
    p.add_argument("--backbone-lr", type=float, default=qs.lr)
    p.add_argument("--train", type=int, default=4_000, help="evidence-train images")
    p.add_argument("--val", type=int, default=500, help="evidence-val images (checkpoint selection)")
    p.add_argument("--test", type=int, default=1_000, help="evidence-test images")
    p.add_argument("--epochs", type=int, default=8, help="epochs of the interpretable models (quick recipes)")
    p.add_argument("--scouter-epochs", type=int, default=0,
                   help="epochs of the SCOUTER runs (0 = --epochs); SCOUTER starts slowly (loss above ln C at first)")
    p.add_argument("--scouter-lr", type=float, default=0.0,
                   help="SCOUTER learning rate (0 = the quick recipe's 1e-3; the reference recipe uses 1e-4)")
    p.add_argument("--scouter-renorm", default="reference", choices=("reference", "abs", "none"),
                   help="SCOUTER's slot-attention renormalisation (models.md §3.1 step 5)")
    p.add_argument("--scouter-vit-block", type=int, default=-1,
                   help="ViT block whose patch tokens feed SCOUTER's slots (-1: the last)")
    p.add_argument("--intr-vit-block", type=int, default=-1,
                   help="ViT block whose patch tokens feed INTR's encoder (-1: the last)")
    p.add_argument("--only", type=lambda s: s.split(","), default=[],
                   help="train only these kinds or task names, comma-separated (e.g. scouter)")
    p.add_argument("--promptcam-variants", type=lambda s: s.split(","), default=["deep"],
                   help="Prompt-CAM variants to train, comma-separated: deep (the method) and/or shallow")
    p.add_argument("--promptcam-epochs", type=int, default=0,
                   help="epochs of the Prompt-CAM runs (0 = --epochs); its few prompt parameters learn slowly")
    p.add_argument("--promptcam-agnostic", type=int, default=0,
                   help="class-agnostic prompts per block (0 = C, the paper's count); more adapt the frozen ViT more")
    p.add_argument("--baseline-epochs", type=int, default=8)
    p.add_argument("--linear-lr", type=float, default=2e-3)
    p.add_argument("--finetune-lr", type=float, default=2e-3)
    p.add_argument("--lambdas", type=lambda s: [float(v) for v in s.split(",")], default=[1.0, 3.0, 10.0],
                   help="SCOUTER λ values, comma-separated, increasing")
    p.add_argument("--eval-images", type=int, default=1_000, help="test images for pointing and area")
    p.add_argument("--report-images", type=int, default=512, help="test images for the per-head trait report")
    p.add_argument("--removal-images", type=int, default=256,
                   help="test images for Prompt-CAM's trait-removal head matrix (0 skips it)")
    p.add_argument("--jobs", type=int, default=1, help="models trained at once (separate processes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (1: see quickstart.py)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    if sorted(args.lambdas) != list(args.lambdas) or len(set(args.lambdas)) != len(args.lambdas):
        p.error("--lambdas must be increasing")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(processName)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if set(BACKBONE_SPLITS) & set(EVIDENCE_SPLITS):
        raise SystemExit("the backbone and evidence splits must differ")
    if args.backbone is None:
        backbone_dir, backbone = pretrain_backbone(args, out)
    else:
        backbone_dir, backbone = args.backbone, check_backbone(args.backbone, args)
    data = evidence_data(args, workers=2)

    from traitlens.backbones import load_model
    from traitlens.train import evaluate_accuracy

    backbone_as_is = evaluate_accuracy(load_model(backbone_dir), data.test)
    log.info("backbone %s as pre-trained: evidence-test accuracy %.3f", backbone_dir, backbone_as_is)

    tasks = tasks_for(args)
    records: dict[str, dict[str, Any]] = {}
    if args.jobs <= 1:
        for task in tasks:
            records[task.name] = run_task(task, backbone_dir, args, data, out)
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                 initargs=(args,)) as pool:
            futures = {pool.submit(_worker_run, t, backbone_dir, args, out): t.name for t in tasks}
            for fut in as_completed(futures):
                records[futures[fut]] = fut.result()
                log.info("finished %s (%d/%d)", futures[fut], len(records), len(tasks))

    order = ["linear", "finetune", "promptcam", *[f"promptcam_{v}" for v in args.promptcam_variants if v != "deep"],
             "intr", f"scouter_lambda{args.lambdas[0]:g}"]
    order += [t.name for t in tasks if t.name not in order]
    models = [records[n] for n in order if n in records]
    sc_rows = []
    for lam in args.lambdas:
        r = records.get(f"scouter_lambda{lam:g}")
        if r is None:
            continue
        sc_rows.append({"lambda": lam, **r["area"], "test_acc": r["test_acc"],
                        "class_hit": r["pointing"]["class"]["hit_rate"]})
    summary = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(argv),
        "wall_seconds": time.perf_counter() - t_start,
        "data": {"config": {"size": args.size, "num_classes": args.classes, "seed": args.seed},
                 "backbone_splits": list(BACKBONE_SPLITS), "evidence_splits": dict(zip(
                     EVIDENCE_SPLITS, (args.train, args.val, args.test), strict=True))},
        "backbone": backbone, "backbone_as_is": backbone_as_is,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "models": models,
        "scouter_lambda": {"rows": sc_rows, "monotone": strictly_decreasing([r["area"] for r in sc_rows])},
        "torch_threads": args.threads,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    md = markdown(summary)
    (out / "results.md").write_text(md)
    print(md)
    return summary


if __name__ == "__main__":
    main()
