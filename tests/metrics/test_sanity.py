"""MPRT (metrics.md §5): model-independent explainers stay at 1; a gradient explainer on a linear model drops to
the hand-computed Spearman correlation; the user's model is never touched."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from traitlens.explain import explain
from traitlens.metrics import mprt, mprt_layers, randomize_parameters


class Linear1(nn.Module):
    def __init__(self, H: int = 4, W: int = 4, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(H * W, classes).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class Exp:
    def __init__(self, maps: torch.Tensor, targets: torch.Tensor) -> None:
        self.maps, self.patch_maps, self.targets = maps, maps, targets


def gradient_explainer(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_()
    y = model(x).gather(1, targets[:, :1]).sum()
    return torch.autograd.grad(y, x)[0]  # [B,1,H,W] for single-channel images


def test_model_independent_explainer_keeps_similarity_one(tiny_vit, tiny_images):
    model = tiny_vit(depth=2)
    x = tiny_images(2)

    def channel_mean(m, imgs, t):
        return imgs.mean(1, keepdim=True).expand(-1, t.shape[1], -1, -1)

    targets = torch.zeros(2, 1, dtype=torch.long)
    before = copy.deepcopy(model.state_dict())
    out = mprt(model, x, Exp(channel_mean(model, x, targets), targets), channel_mean)
    assert out["mprt"].curves.shape == (2, 1, len(mprt_layers(model)))
    assert torch.allclose(out["mprt"].curves, torch.ones_like(out["mprt"].curves))
    assert out["mprt"].knobs["steps"] == ["head", "norm", "blocks.1", "blocks.0", "embed"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # deep copy only


def test_gradient_explainer_on_linear_model_drops_to_hand_spearman():
    stats = pytest.importorskip("scipy.stats")
    model = Linear1()
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    targets = torch.tensor([[1], [2]])
    exp = Exp(gradient_explainer(model, x, targets), targets)
    out = mprt(model, x, exp, gradient_explainer, layers=[("fc", ["fc"])])
    # hand replay of the re-initialisation: weight first, σ = its std, truncated at ±2σ, seed 42
    W = model.fc.weight.detach()
    gen = torch.Generator().manual_seed(42)
    fresh = torch.empty_like(W)
    sigma = float(W.float().std())
    torch.nn.init.trunc_normal_(fresh, 0.0, sigma, -2 * sigma, 2 * sigma, generator=gen)
    for b, c in enumerate(targets[:, 0].tolist()):
        expected = stats.spearmanr(W[c].abs().numpy(), fresh[c].abs().numpy()).statistic
        assert float(out["mprt"].values[b, 0]) == pytest.approx(expected, abs=1e-12)
        signed = stats.spearmanr(W[c].numpy(), fresh[c].numpy()).statistic
        assert float(out["mprt_signed"].values[b, 0]) == pytest.approx(signed, abs=1e-12)


def test_randomize_parameters_truncated_normal_and_module_mode():
    lin = nn.Linear(50, 40)
    with torch.no_grad():
        lin.weight.mul_(3)
    sigma = float(lin.weight.detach().std())
    randomize_parameters(lin, ["weight"], torch.Generator().manual_seed(42))
    assert lin.weight.abs().max() <= 2 * sigma + 1e-6
    # the std of a normal truncated at ±2σ is ≈ 0.88σ
    assert float(lin.weight.detach().std()) == pytest.approx(sigma * 0.88, rel=0.15)
    ln = nn.LayerNorm(8)  # weight of ones: std 0 → σ = 0.02
    randomize_parameters(ln, ["weight"], torch.Generator().manual_seed(0))
    assert ln.weight.abs().max() <= 0.04 + 1e-7
    seq = nn.Sequential(nn.Linear(4, 4))
    before = seq[0].weight.clone()
    assert randomize_parameters(seq, ["0"], torch.Generator().manual_seed(0), reinit="module") == 2
    assert not torch.equal(before, seq[0].weight)


def test_mprt_with_a_real_method_and_independent_mode(tiny_vit, tiny_images):
    model = tiny_vit(depth=2)
    x = tiny_images(2)
    exp = explain(model, x, method="input_x_gradient")

    def explainer(m, imgs, t):
        return explain(m, imgs, method="input_x_gradient", target=t)

    out = mprt(model, x, exp, explainer, mode="independent")
    assert out["mprt"].direction == "lower" and out["mprt"].curves.shape == (2, 1, 5)
    assert (out["mprt"].curves <= 1 + 1e-9).all()
    assert out["mprt"].curves[:, :, 0].mean() < 0.999  # randomising the head changes the gradient map


def test_mprt_ssim_on_linear_model_matches_skimage_on_hand_replayed_weights():
    metrics = pytest.importorskip("skimage.metrics")
    model = Linear1(H=8, W=8)  # the gradient map of class c is W[c] as an 8×8 image, whatever the input
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    targets = torch.tensor([[0], [2]])
    exp = Exp(gradient_explainer(model, x, targets), targets)
    out = mprt(model, x, exp, gradient_explainer, layers=[("fc", ["fc"])], similarity="ssim")
    W = model.fc.weight.detach()
    gen = torch.Generator().manual_seed(42)
    fresh = torch.empty_like(W)
    sigma = float(W.float().std())
    torch.nn.init.trunc_normal_(fresh, 0.0, sigma, -2 * sigma, 2 * sigma, generator=gen)

    def reference(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = a.view(8, 8).numpy(), b.view(8, 8).numpy()
        na, nb = (a - a.min()) / (a.max() - a.min()), (b - b.min()) / (b.max() - b.min())
        return metrics.structural_similarity(na, nb, win_size=7, data_range=1.0, gaussian_weights=False,
                                             use_sample_covariance=True)

    for b, c in enumerate(targets[:, 0].tolist()):
        assert float(out["mprt"].values[b, 0]) == pytest.approx(reference(W[c].abs(), fresh[c].abs()), abs=1e-10)
        assert float(out["mprt_signed"].values[b, 0]) == pytest.approx(reference(W[c], fresh[c]), abs=1e-10)
    for name in ("mprt", "mprt_signed"):
        assert out[name].knobs["similarity"] == "ssim"
        assert "7x7 uniform" in out[name].knobs["ssim"]
    assert mprt(model, x, exp, gradient_explainer, layers=[("fc", ["fc"])])["mprt"].knobs["similarity"] == "spearman"
    with pytest.raises(ValueError, match="similarity"):
        mprt(model, x, exp, gradient_explainer, similarity="hog")


def test_mprt_ssim_stays_one_for_a_model_independent_explainer_and_drops_for_gradients(tiny_vit, tiny_images):
    model = tiny_vit(depth=2, img=16)
    x = tiny_images(3, img=16)

    def channel_mean(m, imgs, t):
        return imgs.mean(1, keepdim=True).expand(-1, t.shape[1], -1, -1)

    targets = torch.zeros(3, 1, dtype=torch.long)
    control = mprt(model, x, Exp(channel_mean(model, x, targets), targets), channel_mean, similarity="ssim")
    assert torch.allclose(control["mprt"].curves, torch.ones_like(control["mprt"].curves))

    def explainer(m, imgs, t):
        return explain(m, imgs, method="input_x_gradient", target=t)

    out = mprt(model, x, explainer(model, x, None), explainer, similarity="ssim")
    curve = out["mprt"].curves.mean((0, 1))  # [steps] = head, norm, blocks.1, blocks.0, embed; mean over images
    assert out["mprt"].knobs["similarity"] == "ssim" and curve.shape == (5,)
    assert (curve < 1).all()
    # the cascade is not monotone step by step, but the fully randomised model ends furthest from the original
    assert curve[-1] < curve[:2].min()
