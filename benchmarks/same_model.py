"""The same-model table for saved interpretable-by-design models: each model's own maps (head mean, top-k ranked heads)
against the post-hoc methods that run on that same model, on TraitShapes test images (docs/reference/metrics.md §9).

Trains nothing: it loads model folders saved by `traitlens train` / the quickstart (`traitlens.load_model`).

Run (after `traitlens quickstart`, whose promptcam|intr|scouter/best folders it scores by default):
    python benchmarks/same_model.py --quickstart traitlens-quickstart --n-images 64 --out runs/same_model
    python benchmarks/same_model.py --model runs/promptcam/best --n-images 32 --out runs/same_model

Writes OUT/same_model.md (one table per model) and OUT/same_model.json, and prints the Markdown. The TraitShapes
images are the quickstart's test split by default (--size, --num-classes, --seed, --split to change); the model's
class names must match them. Existing outputs are kept unless --force.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from traitlens._io import atomic_write
from traitlens.backbones import load_model
from traitlens.data.traitshapes import TraitShapes, TraitShapesConfig, materialize
from traitlens.evaluation.same_model import same_model_table
from traitlens.models import InterpretableModel, list_model_kinds
from traitlens.quickstart import QuickstartConfig


def _models(args: argparse.Namespace) -> dict[str, Path]:
    if args.model:
        return {Path(p).parent.name if Path(p).name == "best" else Path(p).name: Path(p) for p in args.model}
    found = {k.name: args.quickstart / k.name / "best" for k in list_model_kinds()}
    return {kind: path for kind, path in found.items() if path.is_dir()}


def _top_k(text: str) -> int | str | None:
    if text in ("none", "0"):
        return None
    if text == "auto":
        return text
    if not text.isdigit():
        sys.exit(f"error: --top-k takes a number, 'auto' or 'none', not {text!r}")
    return int(text)


def main() -> None:
    qs = QuickstartConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", type=Path,
                        help="a saved interpretable model folder (repeatable); default: the quickstart's")
    parser.add_argument("--quickstart", type=Path, default=qs.out,
                        help="a quickstart output folder holding promptcam|intr|scouter/best")
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--methods", default=None, help="comma-separated post-hoc methods (default: all registered)")
    parser.add_argument("--exclude", default="", help="comma-separated methods to leave out (e.g. the costly ones)")
    parser.add_argument("--top-k", default="auto",
                        help="heads of the ranked-heads row: a number, 'auto' (round(R/3): 4 of 12) or 'none'")
    parser.add_argument("--steps", type=int, default=16, help="deletion/insertion steps (0: one pixel row per step)")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="chance-row random order and bootstrap")
    parser.add_argument("--size", type=int, default=qs.size)
    parser.add_argument("--num-classes", type=int, default=qs.num_classes)
    parser.add_argument("--data-seed", type=int, default=qs.seed)
    parser.add_argument("--split", default="test")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/same_model"))
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs in --out")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    md_path, json_path = args.out / "same_model.md", args.out / "same_model.json"
    if not args.force and (md_path.exists() or json_path.exists()):
        sys.exit(f"error: {md_path} or {json_path} exists; pass --force to overwrite")
    models = _models(args)
    if not models:
        sys.exit(f"error: no model folders given and none under {args.quickstart}/<kind>/best")
    config = TraitShapesConfig(size=args.size, num_classes=args.num_classes, seed=args.data_seed)
    data = materialize(TraitShapes(config, args.split, args.n_images), num_workers=0, progress=False)
    methods = args.methods.split(",") if args.methods else None
    exclude = {m for m in args.exclude.split(",") if m}
    if methods is not None:
        methods = [m for m in methods if m not in exclude]
    elif exclude:
        from traitlens.explain import list_methods

        methods = [m.name for m in list_methods() if m.name not in exclude]
    sections, results = [], {}
    for label, path in models.items():
        net = load_model(path)
        if not isinstance(net, InterpretableModel):
            sys.exit(f"error: {path} holds a {type(net).__name__}, not an interpretable-by-design model")
        if list(getattr(net, "class_names", data.classes)) != list(data.classes):
            sys.exit(f"error: the class names of {path} do not match TraitShapes {config.num_classes} classes "
                     f"at {config.size} px (seed {config.seed}); pass --num-classes/--size/--data-seed")
        table = same_model_table(net, data, methods=methods, n_images=args.n_images, top_k=_top_k(args.top_k),
                                 seed=args.seed, steps=args.steps or None, n_boot=args.n_boot, progress=True)
        sections.append(f"## {label} ({path})\n\n{table.to_markdown()}")
        results[label] = {"path": str(path), **table.to_dict()}
        print(sections[-1], flush=True)
    text = (f"# Same-model table: TraitShapes {args.split}, {args.n_images} images\n\n" + "\n".join(sections))
    atomic_write(md_path, lambda p: p.write_text(text, encoding="utf-8"))
    atomic_write(json_path, lambda p: p.write_text(json.dumps(results, indent=1, allow_nan=False) + "\n",
                                                   encoding="utf-8"))


if __name__ == "__main__":
    main()
