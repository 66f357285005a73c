"""Class sensitivity and discriminativeness (metrics.md §6)."""

from __future__ import annotations

import pytest
import torch

from traitlens.explain import explain
from traitlens.metrics import class_sensitivity, pairwise_class_similarity, random_logit, ssim, trait_precision


def explainer_for(method: str, **opts):
    def run(model, x, target):
        return explain(model, x, method=method, target=target, **opts)

    return run


def test_class_agnostic_method_scores_one(tiny_vit, tiny_images):
    model = tiny_vit(depth=2)
    x = tiny_images(3)
    exp = explain(model, x, method="rollout")
    r = class_sensitivity(model, x, exp, explainer_for("rollout"))
    assert r.values.shape == (3, 1)
    assert torch.allclose(r.values, torch.ones_like(r.values))
    assert pairwise_class_similarity(model, x, exp, explainer_for("rollout"), k=3).value == pytest.approx(1.0)
    assert pairwise_class_similarity(model, x, exp, explainer_for("rollout"), k=3, variant="iou").value == 1.0


def test_cdam_on_u_fixture_with_opposite_heads_scores_minus_one(uniform_vit, tiny_images):
    model = uniform_vit(depth=1)
    with torch.no_grad():  # w_lo = −w_hi, and a zero third class in between: argmax/argmin are classes 0 and 1
        model.head.weight[1] = -model.head.weight[0]
        model.head.weight[2] = 0
        model.head.bias.zero_()
    x = tiny_images(2)
    exp = explain(model, x, method="cdam")
    r = class_sensitivity(model, x, exp, explainer_for("cdam"))
    assert torch.allclose(r.values, -torch.ones_like(r.values), atol=1e-9)
    sp = class_sensitivity(model, x, exp, explainer_for("cdam"), correlation="spearman")
    assert torch.allclose(sp.values, -torch.ones_like(sp.values), atol=1e-9)


def test_ssim_matches_skimage():
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 16, 20, generator=g, dtype=torch.float64)
    b = (a + 0.3 * torch.rand(2, 16, 20, generator=g, dtype=torch.float64)).clamp(0, 1)
    ours = ssim(a, b)
    for i in range(2):
        ref = metrics.structural_similarity(a[i].numpy(), b[i].numpy(), win_size=7, data_range=1.0)
        assert float(ours[i]) == pytest.approx(ref, abs=1e-10)
    assert torch.allclose(ssim(a, a), torch.ones(2, dtype=torch.float64))


def test_random_logit_draws_another_class_reproducibly(tiny_vit, tiny_images):
    model = tiny_vit(depth=1, num_classes=5)
    x = tiny_images(4, img=8)
    exp = explain(model, x, method="cdam")
    idx = torch.tensor([7, 8, 9, 10])
    r1 = random_logit(model, x, exp, explainer_for("cdam"), indices=idx)
    r2 = random_logit(model, x[2:], explain(model, x[2:], method="cdam"), explainer_for("cdam"), indices=idx[2:])
    assert torch.equal(r1.extras["other_class"][2:], r2.extras["other_class"])  # seeded per image, not per batch
    assert (r1.extras["other_class"][:, 0] != exp.targets[:, 0]).all()
    assert torch.allclose(r1.values[2:], r2.values)
    agnostic = random_logit(model, x, explain(model, x, method="rollout"), explainer_for("rollout"))
    assert torch.allclose(agnostic.values, torch.ones_like(agnostic.values))


def test_trait_precision_hand_maps():
    H = W = 8
    disc = torch.zeros(1, 2, H, W, dtype=torch.bool)
    disc[0, 0, :2, :2] = True  # sibling 1 differs in a part at the top-left
    disc[0, 1, 6:, 6:] = True  # sibling 2 differs in a part at the bottom-right
    cls = disc.any(1)
    maps = torch.zeros(1, 3, H, W)
    maps[0, 0] = disc[0, 0].float()  # the class map lights only the first sibling's trait
    maps[0, 1] = disc[0, 0].float()  # sibling 1 looks at the same part → contrast cancels there

    def explainer(model, x, targets):
        assert targets[0, :2].tolist() == [0, 1]  # [class, siblings...]; −1 pads are clamped to a valid id
        return maps

    out = trait_precision(None, torch.zeros(1, 3, H, W), torch.tensor([0]), explainer, torch.tensor([[1, 2]]), disc,
                          cls)
    assert out["trait_ebpg"].value == pytest.approx(0.5)  # 1 inside M_{0,1}, 0 inside M_{0,2}
    assert out["class_ebpg"].value == pytest.approx(1.0)
    # contrast vs sibling 1 is all zero (NaN, excluded); vs sibling 2 all energy is outside M_{0,2}
    assert out["contrast_ebpg"].value == pytest.approx(0.0)
    padded = trait_precision(None, torch.zeros(1, 3, H, W), torch.tensor([0]), explainer, torch.tensor([[1, -1]]),
                             disc, cls)
    assert padded["trait_ebpg"].value == pytest.approx(1.0)  # −1 pads are ignored
