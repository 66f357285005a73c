"""Infidelity (metrics.md §1.6) and max-sensitivity (§2): oracles and agreement with captum on the same samples."""

from __future__ import annotations

import pytest
import torch

from traitlens.metrics import image_generator, infidelity, sensitivity_max
from traitlens.metrics.robustness import perturbation_noise

captum_metrics = pytest.importorskip("captum.metrics")


def linear_model(seed: int = 0, C: int = 3, H: int = 6, W: int = 6, classes: int = 4):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(classes, C, H, W, generator=g, dtype=torch.float64)
    b = torch.randn(classes, generator=g, dtype=torch.float64)
    return (lambda x: x.flatten(1) @ w.flatten(1).T + b), w


def tanh_model(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(16, 3 * 36, generator=g, dtype=torch.float64) * 0.3
    w2 = torch.randn(4, 16, generator=g, dtype=torch.float64)
    return lambda x: torch.tanh(x.flatten(1) @ w1.T) @ w2.T


def test_infidelity_zero_for_linear_model_with_its_weights():
    model, w = linear_model()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    # a single-channel-broadcast map can only equal the weights if they are constant over channels
    w_const = w.mean(1, keepdim=True).expand_as(w).clone()
    model = lambda z: z.flatten(1) @ w_const.flatten(1).T  # noqa: E731
    targets = torch.tensor([[1], [3]])
    phi = w_const[targets[:, 0], 0][:, None]  # [B,1,H,W]
    r = infidelity(model, x, phi, target=targets, normalize=False)
    assert torch.allclose(r.values, torch.zeros_like(r.values), atol=1e-20)
    scaled = infidelity(model, x, 7.0 * phi, target=targets, normalize=True)  # β undoes any scale
    assert torch.allclose(scaled.values, torch.zeros_like(scaled.values), atol=1e-18)


@pytest.mark.parametrize("normalize", [True, False])
def test_infidelity_matches_captum_on_identical_samples(normalize):
    model = tanh_model()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 3, 6, 6, generator=g, dtype=torch.float64)
    maps = torch.randn(3, 1, 6, 6, generator=g, dtype=torch.float64)
    targets = torch.tensor([[0], [2], [1]])
    n, seed, idx = 7, 5, torch.tensor([10, 11, 12])
    ours = infidelity(model, x, maps, target=targets, n_samples=n, normalize=normalize, seed=seed, indices=idx,
                      batch_size=5)
    # replay the very same perturbations for captum (image-major, like its repeat_interleave)
    noise = torch.cat([perturbation_noise("gaussian", x[b:b + 1].expand(n, -1, -1, -1), image_generator(seed, int(i)))
                       for b, i in enumerate(idx)])

    def perturb(inputs):
        return noise, inputs - noise

    ref = captum_metrics.infidelity(model, perturb, x, maps.expand(-1, 3, -1, -1), target=targets[:, 0],
                                    n_perturb_samples=n, max_examples_per_batch=3 * n, normalize=normalize)
    assert torch.allclose(ours.values[:, 0], ref, rtol=1e-9, atol=1e-12)


def test_sensitivity_max_constant_explainer_is_zero_and_matches_captum():
    model = tanh_model()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64)
    targets = torch.tensor([[1], [0]])
    const = torch.rand(1, 1, 6, 6, dtype=torch.float64)

    class Exp:  # the minimal Explanation surface sensitivity_max reads
        def __init__(self, maps):
            self.maps, self.patch_maps, self.targets = maps, maps, targets

    def constant_explainer(m, imgs, t):
        return const.expand(imgs.shape[0], 1, -1, -1)

    r = sensitivity_max(model, x, Exp(const.expand(2, 1, -1, -1)), constant_explainer)
    assert torch.all(r.values == 0)

    def grad_maps(imgs, target):
        with torch.enable_grad():  # captum calls explanation functions under no_grad
            imgs = (imgs[0] if isinstance(imgs, tuple) else imgs).clone().requires_grad_()
            out = model(imgs).gather(1, target.view(-1, 1)).sum()
            return torch.autograd.grad(out, imgs)[0].mean(1, keepdim=True)

    def explainer(m, imgs, t):
        return grad_maps(imgs, t[:, 0])

    n, seed, idx, radius = 6, 2, torch.tensor([0, 1]), 0.05
    ours = sensitivity_max(model, x, Exp(grad_maps(x, targets[:, 0])), explainer, radius=radius, n_samples=n,
                           seed=seed, indices=idx, batch_size=4)
    delta = torch.cat([(torch.rand((n, 3, 6, 6), generator=image_generator(seed, int(i)), dtype=torch.float64) * 2 - 1)
                       * radius for i in idx])

    def perturb(inputs, perturb_radius=radius):
        return (inputs[0] if isinstance(inputs, tuple) else inputs) + delta

    def captum_explain(inputs, target):
        return (grad_maps(inputs, target),)  # captum iterates over the explanation as a tuple of tensors

    ref = captum_metrics.sensitivity_max(captum_explain, x, perturb_func=perturb, n_perturb_samples=n,
                                         max_examples_per_batch=2 * n, target=targets[:, 0])
    assert torch.allclose(ours.values[:, 0], ref, rtol=1e-9)
    assert ours.direction == "lower"


def test_infidelity_presets_and_perturbations():
    model, _ = linear_model()
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    m = torch.rand(1, 1, 6, 6, dtype=torch.float64)
    t = torch.tensor([[0]])
    assert infidelity(model, x, m, target=t, preset="scouter_repro").knobs["n_samples"] == 100
    sq = perturbation_noise("square", x.expand(4, -1, -1, -1), torch.Generator().manual_seed(0), square=2)
    assert ((sq != 0).flatten(1).sum(1) <= 3 * 4).all()  # at most a 2×2 square in every channel
    nb = perturbation_noise("noisy_baseline", x.expand(2, -1, -1, -1), torch.Generator().manual_seed(0))
    assert (x - nb).abs().max() < 2.0  # x − I is the noisy baseline N(0, 0.2²)
