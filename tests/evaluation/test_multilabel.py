"""Multi-label images in `evaluate` (metrics.md §3.1): every present class is explained and scored, and the pointing
game is the per-class accuracy averaged over classes. Checked by hand on canvases of pure-colour squares."""

from __future__ import annotations

import csv
import math

import pytest
import torch
import torch.nn.functional as F

from traitlens.backbones import create_preset, unnormalize
from traitlens.evaluation import evaluate
from traitlens.explain import Explanation

SIZE = 32
CORNERS = [(2, 2), (2, 18), (18, 10)]  # (y, x) of the 10×10 square of class c = 0, 1, 2: never overlapping
PRESENT = [(0, 1), (0, 2), (1, 2), (0, 1, 2), (1,)]  # 1 to 3 classes per canvas: target slots get padded
# An explainer that mixes colour channels per target class: class 0 → red, class 2 → blue, but class 1 → green + 2·blue,
# so class 1's map points at the blue square whenever one is present.
MIX = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 2.0], [0.0, 0.0, 1.0]])
# Pointing game (tol 0) by hand: class 0 hits 3/3; class 1 hits images 0 and 4 (no blue), misses 2 and 3 → 2/4;
# class 2 hits 3/3. Macro = (1 + 0.5 + 1) / 3 = 5/6; micro = 8/10.
# EBPG: 1 for every pair except class 1 on images 2 and 3, where green (0.5 after min-max) holds 1/3 of the energy:
# mean over the 10 pairs = (8 + 2/3) / 10.


def square(c: int) -> torch.Tensor:
    y, x = CORNERS[c]
    m = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    m[y:y + 10, x:x + 10] = True
    return m


class Squares(torch.utils.data.Dataset):
    """Pure-colour squares (class c = colour channel c) with a mask per present class, or boxes with class ids."""

    def __init__(self, annotation: str = "mask") -> None:
        self.annotation = annotation

    def __len__(self) -> int:
        return len(PRESENT)

    def __getitem__(self, i: int) -> dict:
        image = torch.zeros(3, SIZE, SIZE)
        for c in PRESENT[i]:
            image[c][square(c)] = 1.0
        labels = torch.zeros(3)
        labels[list(PRESENT[i])] = 1
        item = {"image": image, "labels": labels, "index": i}
        if self.annotation == "mask":
            item["mask"] = torch.stack([square(c) for c in PRESENT[i]])
        elif self.annotation == "class_masks":  # one mask per class, empty for absent classes
            item["mask"] = torch.stack([square(c) & (c in PRESENT[i]) for c in range(3)])
        else:
            item["box"] = torch.tensor([[CORNERS[c][1], CORNERS[c][0], CORNERS[c][1] + 10, CORNERS[c][0] + 10]
                                        for c in PRESENT[i]], dtype=torch.float32)
            item["box_labels"] = torch.tensor(PRESENT[i])
        return item


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_preset("traitlens-vit-micro", 3).eval()  # 32 px; mean = std = 0.5 round-trips 0 and 1 exactly


def mix_explainer(seen: list):
    def run(m, x, target):
        seen.append(target.cpu())
        images = unnormalize(m, x)
        maps = torch.einsum("bkc,bchw->bkhw", MIX[target.cpu()], images.cpu())
        return Explanation(maps=maps, patch_maps=F.adaptive_avg_pool2d(maps, (4, 4)), targets=target.cpu(),
                           method="mix")

    return run


@pytest.mark.parametrize("annotation", ["mask", "class_masks", "box"])
def test_every_present_class_is_scored_and_the_pointing_game_is_macro(model, annotation):
    seen: list = []
    kw = dict(explainers={"mix": mix_explainer(seen)}, batch_size=2, progress=False, n_boot=50)
    metrics = ["pointing_game", "energy_pointing_game"] + (["pointing_game@box"] if annotation == "box" else [])
    res = evaluate(model, Squares(annotation), ["mix"], metrics, metric_options={"pointing_game": {"tol": 0}}, **kw)
    # batches of 2 images hold 2, 3 and 1 classes at most: every present class was explained, pads repeat one
    assert [t.shape[1] for t in seen] == [2, 3, 1]
    targets = torch.cat([F.pad(t, (0, 3 - t.shape[1]), value=-1) for t in seen])
    assert [tuple(sorted({c for c in row if c >= 0})) for row in targets.tolist()] == PRESENT
    pg = res.results[("mix", "pointing_game")]
    assert pg.value == pytest.approx(5 / 6)
    assert pg.extras["padded"].sum() == 5 and torch.isnan(pg.values[pg.extras["padded"]]).all()
    assert pg.extras["classes"].tolist() == [[0, 1, -1], [0, 2, -1], [1, 2, -1], [0, 1, 2], [1, -1, -1]]
    row = res.row("mix", "pointing_game")
    assert row["n"] == 10 and row["n_nan"] == 0 and 0 <= row["ci_low"] <= row["ci_high"] <= 1
    assert res.value("mix", "energy_pointing_game") == pytest.approx((8 + 2 / 3) / 10)
    if annotation == "box":
        assert res.value("mix", "pointing_game@box") == pytest.approx(5 / 6)
    micro = evaluate(model, Squares(annotation), ["mix"], ["pointing_game"],
                     metric_options={"pointing_game": {"tol": 0, "aggregate": "micro"}}, **kw)
    assert micro.value("mix", "pointing_game") == pytest.approx(0.8)


def test_files_skips_and_a_real_method(model, tmp_path):
    res = evaluate(model, Squares(), ["mix", "cdam"], ["pointing_game", "trait_precision", "road"],
                   explainers={"mix": mix_explainer([])}, out=tmp_path, progress=False, n_boot=0, plots=False,
                   metric_options={"pointing_game": {"tol": 0}})
    with open(tmp_path / "per_image.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["method"] == "mix" and r["metric"] == "pointing_game"]
    assert len(rows) == 10  # padded slots are not written
    assert sum(float(r["value"]) for r in rows) == 8
    assert "every present class" in (tmp_path / "results.md").read_text()
    assert res.config["multi_label"] is True
    assert "multi-label" in res.skipped["mix/trait_precision"] and "multi-label" in res.skipped["mix/road"]
    real = res.results[("cdam", "pointing_game")]  # a registry method runs on the padded [B,K] targets
    assert real.values.shape == (5, 3) and real.n == 10 and int(real.extras["padded"].sum()) == 5
    assert torch.equal(real.extras["classes"], res.results[("mix", "pointing_game")].extras["classes"])
    assert not math.isnan(real.value)


def test_single_target_rules_use_the_union_of_present_classes(model):
    seen: list = []

    def top(m, x, target):  # the prediction rule passes no target: explain class 0 everywhere with the red channel
        seen.append(target)
        t = torch.zeros(x.shape[0], 1, dtype=torch.long)
        return mix_explainer([])(m, x, t)

    res = evaluate(model, Squares(), ["top"], ["pointing_game"], explainers={"top": top}, target="pred",
                   metric_options={"pointing_game": {"tol": 0}}, progress=False, n_boot=0)
    assert seen == [None]
    # the red map hits the union of present squares when red is present (images 0, 1, 3); else it points at (0, 0)
    assert res.results[("top", "pointing_game")].values[:, 0].tolist() == [1, 1, 0, 1, 0]
    with pytest.raises(ValueError, match="one true label per image"):
        evaluate(model, Squares(), ["top"], ["gini"], explainers={"top": top}, target="lsc", lsc={0: 1, 1: 2, 2: 0},
                 progress=False, n_boot=0)
