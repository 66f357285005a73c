"""The full TraitShapes leaderboard: every post-hoc method, the peer libraries and the interpretable models' own maps,
scored against the known trait masks and for faithfulness on one trained ViT.

Run (after `traitlens quickstart`, whose models it scores by default):
    python benchmarks/leaderboard_traitshapes.py --quickstart traitlens-quickstart --n-images 64 --out runs/lb

Prints the Markdown table and writes it (plus the figure and the per-image evaluation files) to --out.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from traitlens.backbones import load_model
from traitlens.data.traitshapes import TraitShapes, TraitShapesConfig, materialize
from traitlens.evaluation import leaderboard
from traitlens.models import list_model_kinds
from traitlens.quickstart import QuickstartConfig
from traitlens.train import evaluate_accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quickstart", type=Path, default=QuickstartConfig.out,
                        help="a quickstart output folder: run/best is the ViT, promptcam|intr|scouter/best the models")
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--steps", type=int, default=None, help="deletion/insertion steps (default: RISE rows)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/leaderboard"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.quickstart / "run" / "best")
    natives = {kind: load_model(args.quickstart / kind / "best") for kind in [k.name for k in list_model_kinds()]
               if (args.quickstart / kind / "best").is_dir()}
    qs = QuickstartConfig()
    config = TraitShapesConfig(size=qs.size, num_classes=qs.num_classes, seed=qs.seed)
    full_test = materialize(TraitShapes(config, "test", qs.n_test), num_workers=0, progress=False)
    test = full_test.head(args.n_images)
    if list(getattr(model, "class_names", test.classes)) != list(test.classes):
        raise SystemExit("the model's class names do not match the quickstart TraitShapes classes")
    # Each row states the accuracy of the model its map came from, on the quickstart's whole test split.
    accuracies = {"ViT": evaluate_accuracy(model, full_test),
                  **{kind: evaluate_accuracy(net, full_test) for kind, net in natives.items()}}
    lb = leaderboard(model, test, n_images=args.n_images, steps=args.steps, out=args.out, native_models=natives,
                     model_name="ViT", accuracies=accuracies)
    args.out.mkdir(parents=True, exist_ok=True)
    table = lb.to_markdown()
    (args.out / "leaderboard.md").write_text(table + "\n")
    (args.out / "leaderboard.png").write_bytes(lb.png)
    print(table)


if __name__ == "__main__":
    main()
