"""Where does a ViT keep the class evidence? Linear probes on each block's CLS token and mean patch token.

Prompt-CAM's Deep variant has class prompts only in the last block, so they can select only from the tokens entering
that block. With a shared scorer the CLS token gives every class the same value, so what Deep can reach is bounded
by the class evidence left in the patch tokens. This probes each block's output of a saved traitlens ViT on TraitShapes
(the evidence splits of `benchmarks/models_evidence.py`) with a linear classifier on

- the CLS token,
- the mean of the patch tokens,

both taken from timm's `forward_intermediates` (before the final norm). Measured in docs/models_evidence.md.

Run (one thread, ~1 min per backbone):

    python benchmarks/token_probes.py runs/gap/best traitlens-quickstart/run/best --train 3200 --test 1000
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

EVIDENCE_SPLITS = ("evidence-train", "evidence-test")  # as in models_evidence.py: the backbone never saw them


@torch.no_grad()
def block_features(model: torch.nn.Module, images: torch.Tensor, batch: int = 256) -> list[dict[str, torch.Tensor]]:
    """Per block: {"cls": [N, D], "mean_patch": [N, D]} of that block's output tokens."""
    per_batch = []
    for chunk in images.split(batch):
        inter = model.forward_intermediates(chunk, return_prefix_tokens=True, output_fmt="NLC",
                                            intermediates_only=True)
        per_batch.append([(prefix[:, 0], patches.mean(1)) for patches, prefix in inter])
    return [{"cls": torch.cat([b[i][0] for b in per_batch]), "mean_patch": torch.cat([b[i][1] for b in per_batch])}
            for i in range(len(per_batch[0]))]


def linear_probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                          steps: int = 300, lr: float = 1e-2, weight_decay: float = 1e-4, seed: int = 0) -> float:
    """Test accuracy of a softmax classifier fitted full-batch (Adam) on standardised features."""
    train_x, test_x = train_x.float(), test_x.float()
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    torch.manual_seed(seed)
    probe = torch.nn.Linear(train_x.shape[1], int(train_y.max()) + 1)
    opt = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(probe(train_x), train_y).backward()
        opt.step()
    with torch.no_grad():
        return (probe(test_x).argmax(1) == test_y).float().mean().item()


def probe_backbone(model_dir: Path, n_train: int, n_test: int, seed: int = 0) -> list[dict[str, float]]:
    """Probe accuracy per block of the saved model at `model_dir` on the TraitShapes classes of `seed`."""
    from traitlens.backbones import load_model
    from traitlens.backbones.preprocess import normalize
    from traitlens.data.traitshapes import TraitShapes, TraitShapesConfig, materialize

    model = load_model(model_dir).eval()
    config = json.loads((model_dir / "config.json").read_text())
    ts = TraitShapesConfig(size=int(config["model_args"]["img_size"]), num_classes=int(config["num_classes"]),
                           seed=seed)
    sets = [materialize(TraitShapes(ts, split, n), 1, False)
            for split, n in zip(EVIDENCE_SPLITS, (n_train, n_test), strict=True)]
    if any(s.classes != config.get("class_names", s.classes) for s in sets):
        raise SystemExit(f"{model_dir} was trained on other TraitShapes classes than seed {seed}'s; pass its --seed")
    feats = [block_features(model, normalize(model, s.images.float() / 255)) for s in sets]
    rows = []
    for block, (tr, te) in enumerate(zip(*feats, strict=True)):
        rows.append({"block": block, **{kind: linear_probe_accuracy(tr[kind], sets[0].labels, te[kind], sets[1].labels)
                                        for kind in ("cls", "mean_patch")}})
    return rows


def main(argv: Sequence[str] | None = None) -> dict[str, list[dict[str, float]]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", type=Path, nargs="+", help="saved traitlens ViT folders (config.json + weights)")
    p.add_argument("--train", type=int, default=3200, help="evidence-train images the probes fit")
    p.add_argument("--test", type=int, default=1000, help="evidence-test images they are scored on")
    p.add_argument("--seed", type=int, default=0, help="the TraitShapes seed the models were trained with")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {}
    for model_dir in args.models:
        rows = probe_backbone(model_dir, args.train, args.test, args.seed)
        results[str(model_dir)] = rows
        print(f"\n{model_dir} (the last row is the last block's output; Deep reads the row above it)\n")
        print("| block | CLS token | mean patch token |\n|---|---|---|")
        for r in rows:
            print(f"| {r['block']} | {r['cls']:.3f} | {r['mean_patch']:.3f} |")
    return results


if __name__ == "__main__":
    main()
