"""Class sensitivity and discriminativeness (metrics.md §6)."""

from __future__ import annotations

import pytest
import torch

from traitlens.explain import explain
from traitlens.metrics import class_sensitivity, pairwise_class_similarity, random_logit, ssim, trait_precision
from traitlens.metrics.stats import minmax_ssim


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


def _structured_pairs(h: int, w: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Map pairs with structure saliency maps have: ramps, blobs, edges, checkerboards, peaks, constants."""
    y, x = torch.meshgrid(torch.linspace(0, 1, h, dtype=torch.float64), torch.linspace(0, 1, w, dtype=torch.float64),
                          indexing="ij")

    def blob(cy: float, cx: float, s: float) -> torch.Tensor:
        return torch.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * s**2))

    checker = ((torch.arange(h)[:, None] // 2 + torch.arange(w)[None, :] // 2) % 2).double()
    peak = torch.zeros(h, w, dtype=torch.float64)
    peak[h // 3, w // 2] = 1
    edge = (x > 0.5).double()
    return [(x, y), (blob(0.5, 0.5, 0.2), blob(0.6, 0.4, 0.2)), (checker, 1 - checker), (edge, x.clamp(0.3, 0.7)),
            (peak, blob(1 / 3, 0.5, 0.1)), (torch.zeros(h, w, dtype=torch.float64), x), (blob(0.2, 0.8, 0.3), x * y)]


@pytest.mark.parametrize("size", [(16, 20), (7, 7), (7, 11)])
def test_ssim_matches_skimage_on_random_and_structured_maps(size):
    metrics = pytest.importorskip("skimage.metrics")
    h, w = size
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, h, w, generator=g, dtype=torch.float64)
    b = (a + 0.3 * torch.rand(3, h, w, generator=g, dtype=torch.float64)).clamp(0, 1)
    pairs = [*zip(a, b, strict=True), (a[0], a[1]), *_structured_pairs(h, w)]
    ours = ssim(torch.stack([p for p, _ in pairs]), torch.stack([q for _, q in pairs]))
    # skimage, spelled out: uniform 7×7 window, sample covariance (its default for a uniform window, and what
    # Quantus' ssim runs), K1 0.01, K2 0.03, data_range 1, mean over the valid region
    for i, (p, q) in enumerate(pairs):
        ref = metrics.structural_similarity(p.numpy(), q.numpy(), win_size=7, data_range=1.0, gaussian_weights=False,
                                            use_sample_covariance=True, K1=0.01, K2=0.03)
        assert float(ours[i]) == pytest.approx(ref, abs=1e-10)
    # the match above (1e-10) pins the convention: population covariance differs by ~1e-5 on the same pair
    population = metrics.structural_similarity(a[0].numpy(), b[0].numpy(), win_size=7, data_range=1.0,
                                               use_sample_covariance=False)
    assert abs(float(ours[0]) - population) > 1e-6
    assert torch.allclose(ssim(a, a), torch.ones(3, dtype=torch.float64))


def test_minmax_ssim_normalises_each_map_then_matches_skimage():
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(1)
    raw_a = 5 * torch.rand(2, 12, 12, generator=g, dtype=torch.float64) - 3  # arbitrary scale and offset
    raw_b = raw_a.roll(2, -1) * 0.01 + 0.2 * torch.rand(2, 12, 12, generator=g, dtype=torch.float64)
    ours = minmax_ssim(raw_a, raw_b)
    for i in range(2):
        a, b = raw_a[i].numpy(), raw_b[i].numpy()
        na, nb = (a - a.min()) / (a.max() - a.min()), (b - b.min()) / (b.max() - b.min())
        assert float(ours[i]) == pytest.approx(metrics.structural_similarity(na, nb, win_size=7, data_range=1.0),
                                               abs=1e-10)
    with pytest.raises(ValueError, match="at least 7x7"):
        minmax_ssim(raw_a[:, :6], raw_b[:, :6])


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
