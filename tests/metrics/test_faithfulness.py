"""Faithfulness metrics (metrics.md §1): the §8 hand oracles, tie rules, presets, batching and ROAD."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from traitlens.explain import explain
from traitlens.metrics import (
    abpc,
    aopc,
    chefer_perturbation,
    deletion,
    insertion,
    noisy_linear_impute,
    road,
    tam_agreement,
)
from traitlens.metrics.perturbation import perturbation_scores, rise_blur_kernel, substrate
from traitlens.metrics.ranking import location_ranks, pixel_ranks

# The §8 toy: a single-channel 2×2 image x = [[4,3],[2,1]], f(x) = mean(x) as a logit, map s = x, substrate 0.
X = torch.tensor([[4.0, 3.0], [2.0, 1.0]], dtype=torch.float64).view(1, 1, 2, 2)
S = X[:, 0]
T = torch.zeros(1, 1, dtype=torch.long)


def f_mean(z: torch.Tensor) -> torch.Tensor:
    return z.mean((1, 2, 3)).view(-1, 1)


class CountingModel(torch.nn.Module):
    """Wraps a model and counts forward calls (to check one call per chunk)."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn, self.calls, self.rows = fn, 0, 0

    def forward(self, x):
        self.calls += 1
        self.rows += x.shape[0]
        return self.fn(x)


def test_deletion_insertion_hand_oracle():
    d = deletion(f_mean, X, S, step=1, score="logit", target=T)
    assert torch.allclose(d.curves[0, 0], torch.tensor([2.5, 1.5, 0.75, 0.25, 0.0], dtype=torch.float64))
    assert d.value == pytest.approx(0.9375)
    assert d.direction == "lower"
    i = insertion(f_mean, X, S, step=1, score="logit", target=T, substrate="zero")
    assert torch.allclose(i.curves[0, 0], torch.tensor([0.0, 1.0, 1.75, 2.25, 2.5], dtype=torch.float64))
    assert i.value == pytest.approx(1.5625)
    assert i.direction == "higher"
    assert d.knobs["substrate"] == "zero" and d.knobs["score"] == "logit" and d.knobs["tie_break"] == "index"


def test_aopc_hand_oracle():
    a = aopc(f_mean, X, S, order="morf", region=1, steps=4, score="logit", target=T)
    assert a.value == pytest.approx(1.5)
    lerf = aopc(f_mean, X, S, order="lerf", region=1, steps=4, score="logit", target=T)
    # LeRF drops 1, 2, 3, 4 in turn: p = [2.5, 2.25, 1.75, 1, 0] → (0 + .25 + .75 + 1.5 + 2.5)/5
    assert lerf.value == pytest.approx(1.0)
    assert lerf.direction == "lower"


def test_abpc_hand_oracles_and_constant_map():
    fr = [0, 0.25, 0.5, 0.75, 1]
    r = abpc(f_mean, X, S, unit="pixel", fractions=fr, auc="mean", score="logit", target=T)
    assert r.value == pytest.approx(0.5)
    assert torch.allclose(r.extras["lerf_curve"][0, 0], torch.tensor([2.5, 2.25, 1.75, 1.0, 0.0], dtype=torch.float64))
    agcam = abpc(f_mean, X, S, preset="agcam", score="logit", target=T)
    assert agcam.value == pytest.approx(6 / 11)
    assert agcam.knobs["n_points"] == 11 and agcam.knobs["auc"] == "mean"
    const = abpc(f_mean, X, torch.ones(1, 2, 2), unit="pixel", fractions=fr, auc="mean", score="logit", target=T)
    assert const.value == 0.0


def test_tie_rule_stable_index_and_random():
    s = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0]])
    morf = location_ranks(s, "morf")
    assert morf.tolist() == [[3, 0, 1, 4, 2]]  # ties among the 3s broken by flat index
    lerf = location_ranks(s, "lerf")
    assert lerf.tolist() == [[1, 2, 3, 0, 4]]
    const = torch.zeros(1, 6)
    assert torch.equal(location_ranks(const, "morf"), location_ranks(const, "lerf"))
    r1 = location_ranks(s, "morf", "random", seed=0, indices=torch.tensor([5]))
    r2 = location_ranks(s, "morf", "random", seed=0, indices=torch.tensor([5]))
    assert torch.equal(r1, r2)
    # the three tied maxima occupy ranks 0..2 in some seeded order, the 1 is next, the 0 last
    assert sorted(r1[0, [1, 2, 4]].tolist()) == [0, 1, 2] and r1[0, 0] == 3 and r1[0, 3] == 4


def test_patch_unit_and_regions_follow_ranking():
    maps = torch.zeros(1, 1, 4, 4)
    maps[0, 0, 2:, :2] = 5  # bottom-left 2×2 region is the most relevant
    ranks, n = pixel_ranks(maps, 2)
    assert n == 4
    assert (ranks[0, 0, 2:, :2] == 0).all() and (ranks[0, 0, :2, :2] == 1).all()
    patch = torch.tensor([[[[0.0, 1.0], [2.0, 0.5]]]])
    pr, n = pixel_ranks(maps, "patch", patch_maps=patch)
    assert n == 4 and (pr[0, 0, 2:, :2] == 0).all() and (pr[0, 0, :2, 2:] == 1).all()


def test_perturbation_engine_batches_all_steps_in_chunks():
    torch.manual_seed(0)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    w = torch.randn(3, 3 * 64, dtype=torch.float64)
    model = CountingModel(lambda z: z.flatten(1) @ w.T)
    maps = torch.rand(3, 2, 8, 8, dtype=torch.float64)
    targets = torch.tensor([[0, 1], [2, 0], [1, 1]])
    d = deletion(model, x, maps, step=8, score="logit", target=targets, batch_size=20)
    total = 3 * 2 * 9
    assert model.rows == total and model.calls == math.ceil(total / 20)
    # per-image calls equal the batched call (no batch coupling)
    for b in range(3):
        single = deletion(model, x[b:b + 1], maps[b:b + 1], step=8, score="logit", target=targets[b:b + 1])
        assert torch.allclose(single.values, d.values[b:b + 1])
    # a linear model: deleting to zero removes each pixel's contribution exactly
    ranks, _ = pixel_ranks(maps)
    last = perturbation_scores(model, x, ranks, torch.tensor([64]), torch.zeros_like(x), targets, score="logit")
    assert torch.allclose(last, torch.zeros_like(last))


def test_rise_blur_kernel_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    inp = np.zeros((11, 11))
    inp[5, 5] = 1
    ref = ndimage.gaussian_filter(inp, 5)
    assert np.allclose(rise_blur_kernel().numpy(), ref, atol=1e-12)
    blurred = substrate("blur", torch.ones(1, 3, 16, 16, dtype=torch.float64))
    assert blurred[0, 0, 8, 8] == pytest.approx(1.0)  # interior: the kernel sums to 1
    assert blurred[0, 0, 0, 0] < 0.6  # zero padding darkens the border, as in RISE


def test_chefer_preset_uses_black_and_accuracy(tiny_vit, tiny_images):
    model = tiny_vit(depth=1, img=8, patch=4)
    x = tiny_images(2)
    exp = explain(model, x, method="rollout")
    labels = model(x).argmax(-1)
    pos = chefer_perturbation(model, x, exp, labels, sign="positive")
    assert pos.curves.shape == (2, 1, 10) and torch.all(pos.curves[:, :, 0] == 1)  # unperturbed: correct by design
    assert 0 <= pos.value <= 1 and pos.direction == "lower"
    assert aopc(model, x, exp, order="lerf", preset="chefer", labels=labels).name == "chefer_negative"


def test_aopc_samek_preset_knobs(tiny_vit, tiny_images):
    model = tiny_vit(depth=1, img=8, patch=4)
    x = tiny_images(1)
    exp = explain(model, x, method="raw_attention")
    r = aopc(model, x, exp, preset="samek", indices=torch.tensor([3]))
    assert r.knobs["region"] == 9 and r.knobs["substrate"] == "uniform" and r.curves.shape[-1] == 2  # one 9×9 region
    again = aopc(model, x, exp, preset="samek", indices=torch.tensor([3]))
    assert torch.equal(r.values, again.values)  # uniform substrate seeded per image


# ----------------------------------------------------------------------------- ROAD


def _ramp(H=10, W=12, a=0.3, b=-0.2, c=1.5):
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    return (a * u + b * v + c).expand(1, 2, H, W).clone()


def test_road_imputation_reproduces_linear_ramp():
    img = _ramp()
    hole = torch.zeros(1, 10, 12, dtype=torch.bool)
    hole[0, 3:7, 4:9] = True  # interior: every removed pixel has all 8 neighbours inside the image
    out = noisy_linear_impute(img, hole, noise=0.0, solver="cg")
    assert torch.allclose(out, img, atol=1e-6)
    pytest.importorskip("scipy")
    direct = noisy_linear_impute(img, hole, noise=0.0, solver="direct")
    assert torch.allclose(direct, img, atol=1e-10)


def test_road_cg_agrees_with_direct_on_random_holes():
    pytest.importorskip("scipy")
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 12, 12, generator=g, dtype=torch.float64)
    hole = torch.rand(2, 12, 12, generator=g) < 0.5  # includes border pixels and large holes
    cg = noisy_linear_impute(img, hole, noise=0.0, solver="cg")
    direct = noisy_linear_impute(img, hole, noise=0.0, solver="direct")
    assert torch.allclose(cg, direct, atol=1e-4)
    assert torch.equal(cg[~hole[:, None].expand_as(cg)], img[~hole[:, None].expand_as(img)])  # kept pixels unchanged
    noisy = noisy_linear_impute(img, hole, noise=0.01, generators=[torch.Generator().manual_seed(1)] * 2)
    diff = (noisy - cg)[hole[:, None].expand_as(cg)]
    assert 0.005 < float(diff.std()) < 0.02  # N(0, 0.01²) on imputed pixels only


def test_road_outputs_and_directions(tiny_vit, tiny_images):
    model = tiny_vit(depth=1, img=8, patch=4)
    x = tiny_images(2)
    exp = explain(model, x, method="input_x_gradient")
    labels = torch.tensor([0, 1])
    out = road(model, x, exp, labels, percentages=(20, 50, 80), indices=torch.tensor([0, 1]))
    assert set(out) == {"road_morf", "road_lerf", "road_combined"}
    assert out["road_morf"].direction == "lower" and out["road_combined"].direction == "higher"
    assert out["road_morf"].curves.shape == (2, 1, 3)
    assert torch.allclose(out["road_combined"].values, (out["road_lerf"].values - out["road_morf"].values) / 2)
    second = replace(exp, maps=exp.maps[1:], patch_maps=exp.patch_maps[1:], targets=exp.targets[1:], logits=None)
    again = road(model, x[1:], second, labels[1:], percentages=(20, 50, 80), indices=torch.tensor([1]))
    assert torch.allclose(again["road_morf"].values, out["road_morf"].values[1:])  # seeded per image, not per batch


def test_tam_agreement_is_one_for_tam_itself(tiny_vit, tiny_images):
    model = tiny_vit(depth=1, img=8, patch=4)
    x = tiny_images(3)
    exp = explain(model, x, method="tam")
    r = tam_agreement(model, x, exp)
    assert r.value == pytest.approx(1.0) and torch.allclose(r.values, torch.ones(3, 1, dtype=torch.float64))
    per = tam_agreement(model, x, explain(model, x, method="raw_attention"), mode="per_image")
    assert per.aggregate == "mean" and per.values.shape == (3, 1)


def test_pooled_tam_aggregators_skip_nan_pairs() -> None:
    from scipy.stats import spearmanr

    from traitlens.metrics import MetricResult
    from traitlens.metrics._registry import AGGREGATORS

    g = torch.Generator().manual_seed(0)
    scores, tam = torch.randn(3, 2, 16, generator=g, dtype=torch.float64), torch.randn(3, 2, 16, generator=g,
                                                                                      dtype=torch.float64)
    scores[1, 1] = math.nan  # a padded target slot (multi-label data)
    tam[2, 0, 3] = math.nan
    result = MetricResult("tam_agreement", torch.zeros(3, 2), "higher", {}, extras={"scores": scores, "tam": tam})
    keep = ~(scores.isnan() | tam.isnan()).flatten().numpy()
    a, b = scores.flatten().numpy()[keep], tam.flatten().numpy()[keep]
    assert AGGREGATORS["pooled_pearson"](result) == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-12)
    assert AGGREGATORS["pooled_spearman"](result) == pytest.approx(spearmanr(a, b)[0], abs=1e-12)
