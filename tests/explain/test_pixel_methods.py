"""Input×gradient, integrated gradients, SmoothGrad (posthoc.md §11–13): analytic oracles, captum, batching."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from captum.attr import InputXGradient as CaptumIxG
from captum.attr import IntegratedGradients as CaptumIG
from captum.attr import NoiseTunnel, Saliency

from traitlens.backbones.preprocess import normalize
from traitlens.explain import TargetSpec, explain, get_method
from traitlens.explain._pixel import gaussian_blur, sum_pool
from traitlens.explain.input_x_gradient import InputXGradient
from traitlens.explain.integrated_gradients import IntegratedGradients, path_coefficients
from traitlens.explain.smoothgrad import SmoothGrad

f64 = torch.float64
PIXEL_METHODS = ("input_x_gradient", "integrated_gradients", "smoothgrad")
FAST = {"input_x_gradient": {}, "integrated_gradients": {"n_steps": 4}, "smoothgrad": {"n_samples": 3}}


class LinearModel(nn.Module):
    """f(x) = ⟨W_c, x⟩ + b_c."""

    def __init__(self, num_classes: int = 3, img: int = 8, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(num_classes, 3, img, img, generator=g, dtype=f64))
        self.b = nn.Parameter(torch.randn(num_classes, generator=g, dtype=f64))
        self.num_classes = num_classes
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,kchw->bk", x, self.W) + self.b


class QuadraticModel(nn.Module):
    """f(x) = (wᵀx)² (one class)."""

    def __init__(self, img: int = 8, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(3, img, img, generator=g, dtype=f64) / img)
        self.num_classes = 1
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x * self.w).sum((1, 2, 3)) ** 2).unsqueeze(1)


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.GELU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
        self.num_classes = 3
        self.double().eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def spec(target, batch: int, num_classes: int = 3) -> TargetSpec:
    return TargetSpec(target, batch, num_classes)


def input_grad(model: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_()
    return torch.autograd.grad(model(x).gather(1, classes[:, None]).sum(), x)[0]


def smoothgrad_noise(x: torch.Tensor, n: int, seed: int, noise_level: float = 0.15) -> torch.Tensor:
    """The noise SmoothGrad draws with a generator seeded `seed`: [B,n,C,H,W], one block per image in order."""
    g = torch.Generator().manual_seed(seed)
    flat = x.flatten(1)
    sigma = noise_level * (flat.amax(1) - flat.amin(1))
    return torch.stack([torch.randn((n, *x.shape[1:]), generator=g, dtype=x.dtype) * sigma[b] for b in range(len(x))])


def test_registry_metadata():
    for name in PIXEL_METHODS:
        info = get_method(name)
        assert (info.signed, info.class_specific, info.needs_grad) == (True, True, True)
        assert info.default_norm == "none" and info.families == ("vit", "cnn", "logits")


# --- analytic oracles -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channel_reduce", ["mean", "sum"])
def test_input_x_gradient_linear_oracle(tiny_images, channel_reduce):
    """M = reduce_c(x ⊙ W_c) exactly; patch maps sum-pool it over p×p patches."""
    model = LinearModel()
    x = tiny_images(2)
    exp = explain(model, x, "input_x_gradient", target="topk:3", patch_size=4, channel_reduce=channel_reduce)
    W = model.W.detach()[exp.targets]  # [B,K,C,H,W]
    expected = x.unsqueeze(1) * W
    torch.testing.assert_close(exp.extras["attributions"], expected, atol=1e-14, rtol=0)
    reduced = expected.mean(2) if channel_reduce == "mean" else expected.sum(2)
    torch.testing.assert_close(exp.extras["pixel_maps"], reduced, atol=1e-14, rtol=0)
    by_hand = reduced.reshape(2, 3, 2, 4, 2, 4).sum((3, 5))
    torch.testing.assert_close(exp.patch_maps, by_hand, atol=1e-13, rtol=0)


@pytest.mark.parametrize(("method", "n_steps"), [("riemann_right", 1), ("riemann_right", 50), ("riemann_left", 3),
                                                 ("riemann_middle", 3), ("riemann_trapezoid", 2),
                                                 ("riemann_trapezoid", 5), ("gausslegendre", 1), ("gausslegendre", 4)])
@pytest.mark.parametrize("baseline", ["zero", "black", "blur", "tensor", 0.5])
def test_integrated_gradients_linear_oracle(tiny_images, method, n_steps, baseline):
    """IG = (x − x′) ⊙ W_c exactly for any m, and the completeness gap is 0."""
    model = LinearModel()
    x = tiny_images(2)
    if baseline == "tensor":
        baseline = torch.linspace(-1, 1, 8, dtype=f64).view(1, 1, 1, 8)
    explainer = IntegratedGradients(model, n_steps=n_steps, integration=method, baseline=baseline, patch_size=4,
                                    internal_batch_size=7)
    out = explainer.attribute(x, spec("topk:2", 2))
    x_prime = explainer.baselines(x)
    expected = (x - x_prime).unsqueeze(1) * model.W.detach()[out.targets]
    torch.testing.assert_close(out.extras["attributions"], expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.extras["convergence_delta"], torch.zeros(2, 2, dtype=f64), atol=1e-11, rtol=0)


def test_integrated_gradients_baselines(tiny_images):
    model = LinearModel()
    x = tiny_images(2)
    black = IntegratedGradients(model, baseline="black").baselines(x)
    torch.testing.assert_close(black, normalize(model, torch.zeros_like(x)))  # pixel value 0 in model space
    blurred = IntegratedGradients(model, baseline="blur", blur_sigma=1.0).baselines(x)
    torch.testing.assert_close(blurred.mean((2, 3)), x.mean((2, 3)), atol=0.2, rtol=0)
    assert blurred.std() < x.std()
    const = torch.ones(1, 3, 8, 8, dtype=f64)
    torch.testing.assert_close(gaussian_blur(const, 5.0), const)  # replicate padding keeps a constant image


@pytest.mark.parametrize("m", [7, 50])
def test_integrated_gradients_quadratic_oracle(tiny_images, m):
    """f = (wᵀx)², x′ = 0, right Riemann sum: IG_i = 2·x_i·w_i·(wᵀx)·(m+1)/(2m), ΣIG = (wᵀx)²·(m+1)/m."""
    model = QuadraticModel()
    x = tiny_images(2)
    exp = explain(model, x, "integrated_gradients", target=0, n_steps=m, patch_size=4)
    w = model.w.detach()
    s = (x * w).sum((1, 2, 3))  # wᵀx [B]
    expected = 2 * x * w * s.view(-1, 1, 1, 1) * (m + 1) / (2 * m)
    torch.testing.assert_close(exp.extras["attributions"][:, 0], expected, atol=1e-13, rtol=0)
    total = exp.extras["attributions"].flatten(1).sum(1)
    torch.testing.assert_close(total, s**2 * (m + 1) / m, atol=1e-12, rtol=0)
    torch.testing.assert_close(exp.extras["convergence_delta"][:, 0], s**2 / m, atol=1e-12, rtol=0)


@pytest.mark.parametrize("square", [False, True])
def test_smoothgrad_linear_oracle(tiny_images, square):
    """The gradient of a linear f is W_c everywhere, so SG = W_c for any σ (and W_c² for SmoothGrad²)."""
    model = LinearModel()
    x = tiny_images(2)
    exp = explain(model, x, "smoothgrad", target="topk:3", noise_level=0.7, n_samples=5, square=square,
                  patch_size=4, generator=torch.Generator().manual_seed(0))
    W = model.W.detach()[exp.targets]
    torch.testing.assert_close(exp.extras["attributions"], W * W if square else W, atol=1e-13, rtol=0)
    assert (exp.extras["sigma"] > 0).all()


def test_smoothgrad_zero_noise_is_the_plain_gradient(tiny_vit, tiny_images):
    model = tiny_vit(depth=2)
    x = tiny_images(2)
    exp = explain(model, x, "smoothgrad", noise_level=0.0, n_samples=3)
    expected = input_grad(model, x, exp.targets[:, 0])
    torch.testing.assert_close(exp.extras["attributions"][:, 0], expected, atol=1e-13, rtol=0)
    torch.testing.assert_close(exp.extras["pixel_maps"][:, 0], expected.mean(1), atol=1e-13, rtol=0)


@pytest.mark.parametrize(("multiply_by_input", "square"), [(False, False), (True, False), (False, True), (True, True)])
def test_smoothgrad_equals_hand_loop_with_the_same_noise(tiny_vit, tiny_images, multiply_by_input, square):
    model = tiny_vit(depth=2)
    x = tiny_images(2)
    n = 4
    exp = explain(model, x, "smoothgrad", target=[1, 2], n_samples=n, multiply_by_input=multiply_by_input,
                  square=square, generator=torch.Generator().manual_seed(5), internal_batch_size=3)
    noise = smoothgrad_noise(x, n, seed=5)
    total = torch.zeros_like(x)
    for s in range(n):
        xs = x + noise[:, s]
        a = input_grad(model, xs, exp.targets[:, 0])
        a = a * xs if multiply_by_input else a
        total += a * a if square else a
    torch.testing.assert_close(exp.extras["attributions"][:, 0], total / n, atol=1e-13, rtol=0)


def test_smoothgrad_seed_reproduces(tiny_vit, tiny_images):
    model = tiny_vit(depth=1)
    x = tiny_images(2)
    runs = [explain(model, x, "smoothgrad", n_samples=3, generator=torch.Generator().manual_seed(s)).patch_maps
            for s in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])
    torch.manual_seed(3)
    a = explain(model, x, "smoothgrad", n_samples=3).patch_maps  # global RNG
    torch.manual_seed(3)
    assert torch.equal(a, explain(model, x, "smoothgrad", n_samples=3).patch_maps)


# --- captum ----------------------------------------------------------------------------------------------------


def test_input_x_gradient_equals_captum(tiny_vit, tiny_images):
    model = tiny_vit(depth=2)
    x = tiny_images(3)
    exp = explain(model, x, "input_x_gradient", target="topk:2")
    for k in range(2):
        ref = CaptumIxG(model).attribute(x.clone().requires_grad_(), target=exp.targets[:, k])
        torch.testing.assert_close(exp.extras["attributions"][:, k], ref, atol=1e-13, rtol=0)
        torch.testing.assert_close(exp.extras["pixel_maps"][:, k], ref.mean(1), atol=1e-13, rtol=0)
        torch.testing.assert_close(exp.patch_maps[:, k], sum_pool(ref.mean(1), (4, 4)), atol=1e-13, rtol=0)


@pytest.mark.parametrize("method", ["riemann_right", "riemann_trapezoid", "gausslegendre"])
@pytest.mark.parametrize("baseline", ["zero", "tensor"])
def test_integrated_gradients_equals_captum(tiny_vit, tiny_images, method, baseline):
    """Same method, n_steps and baseline as captum; captum's trapezoid weights need trapezoid_weights='captum'.

    captum rounds its quadrature to float32 (Riemann α from float32 `torch.linspace(...).tolist()`, step sizes
    through `.float()`), so a float64 model agrees to ~1e-7 relative, not to 1e-13.
    """
    model = tiny_vit(depth=2)
    x = tiny_images(2)
    m = 6
    base = torch.zeros_like(x) if baseline == "zero" else tiny_images(2, seed=9) * 0.3
    exp = explain(model, x, "integrated_gradients", target="topk:2", integration=method, n_steps=m,
                  baseline=base if baseline == "tensor" else "zero", trapezoid_weights="captum")
    tol = 1e-6
    for k in range(2):
        ref, delta = CaptumIG(model).attribute(x.clone(), baselines=base, target=exp.targets[:, k], n_steps=m,
                                               method=method, return_convergence_delta=True)
        torch.testing.assert_close(exp.extras["attributions"][:, k], ref, atol=1e-9, rtol=tol)
        torch.testing.assert_close(exp.extras["pixel_maps"][:, k], ref.mean(1), atol=1e-9, rtol=tol)
        torch.testing.assert_close(exp.extras["convergence_delta"][:, k], delta, atol=1e-8, rtol=tol)
    if method == "riemann_trapezoid":  # the exact trapezoid rule rescales captum's weights by m/(m−1)
        exact = explain(model, x, "integrated_gradients", target=exp.targets, integration=method, n_steps=m,
                        baseline=base if baseline == "tensor" else "zero")
        torch.testing.assert_close(exact.extras["attributions"], exp.extras["attributions"] * m / (m - 1))


def test_path_coefficients_sum_to_one():
    for method in ("riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre"):
        alphas, weights = path_coefficients(method, 5)
        torch.testing.assert_close(weights.sum(), torch.tensor(1.0, dtype=f64))
        assert alphas.min() >= 0 and alphas.max() <= 1
    assert path_coefficients("riemann_trapezoid", 5, "captum")[1].sum().item() == pytest.approx(4 / 5)
    assert path_coefficients("riemann_right", 50)[0][-1] == 1.0  # α = k/50, k = 1..50 (k = 0 excluded)


@pytest.mark.parametrize(("nt_type", "square", "multiply_by_input"),
                         [("smoothgrad", False, False), ("smoothgrad_sq", True, False), ("smoothgrad", False, True)])
def test_smoothgrad_equals_captum_noise_tunnel_with_the_same_noise(tiny_vit, tiny_images, monkeypatch, nt_type,
                                                                    square, multiply_by_input):
    """captum draws its noise from the global RNG with its own shapes and a float32 σ, so the same seed does not
    give the same noise; we hand captum our noise tensor by replacing `NoiseTunnel._add_noise_to_input`
    (captum then expands the targets, runs `Saliency(abs=False)` / `InputXGradient` and averages itself)."""
    model = tiny_vit(depth=2)
    x = tiny_images(2)
    n = 4
    exp = explain(model, x, "smoothgrad", target="topk:2", n_samples=n, square=square,
                  multiply_by_input=multiply_by_input, generator=torch.Generator().manual_seed(11))
    noise = smoothgrad_noise(x, n, seed=11).reshape(2 * n, *x.shape[1:])  # rows (image, sample), as captum's

    def our_noise(inp: torch.Tensor, stdev: float, nt_samples_partition: int) -> torch.Tensor:
        assert nt_samples_partition == n
        return inp.repeat_interleave(nt_samples_partition, dim=0) + noise

    monkeypatch.setattr(NoiseTunnel, "_add_noise_to_input", staticmethod(our_noise))
    inner = CaptumIxG(model) if multiply_by_input else Saliency(model)
    extra = {} if multiply_by_input else {"abs": False}
    for k in range(2):
        ref = NoiseTunnel(inner).attribute(x.clone(), nt_type=nt_type, nt_samples=n, stdevs=1.0,
                                           target=exp.targets[:, k], **extra)
        torch.testing.assert_close(exp.extras["attributions"][:, k], ref, atol=1e-13, rtol=1e-12)


# --- batching, targets, other models ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", PIXEL_METHODS)
def test_expand_vjp_loop_chunks_and_batch_agree(tiny_vit, tiny_images, method):
    model = tiny_vit(depth=2)
    x = tiny_images(3)
    opts = dict(FAST[method])

    def run(images, target, **kw):
        if method == "smoothgrad":
            kw["generator"] = torch.Generator().manual_seed(4)
        return explain(model, images, method, target=target, **opts, **kw)

    ref = run(x, "topk:2", internal_batch_size=None)
    variants = [run(x, "topk:2", multi_target="vjp"), run(x, "topk:2", internal_batch_size=1),
                run(x, "topk:2", internal_batch_size=5, multi_target="vjp")]
    for other in variants:
        torch.testing.assert_close(other.extras["attributions"], ref.extras["attributions"], atol=1e-13, rtol=0)
        assert torch.equal(other.targets, ref.targets)
    for k in range(2):  # each target alone (SmoothGrad: same seed, so the same noise for every target)
        one = run(x, ref.targets[:, k])
        torch.testing.assert_close(one.patch_maps[:, 0], ref.patch_maps[:, k], atol=1e-13, rtol=0)
    if method != "smoothgrad":  # per-image noise order differs for a single image
        for i in range(3):
            single = run(x[i:i + 1], ref.targets[i:i + 1])
            torch.testing.assert_close(single.patch_maps, ref.patch_maps[i:i + 1], atol=1e-13, rtol=0)
    torch.testing.assert_close(ref.logits, model(x).detach(), atol=1e-13, rtol=0)


def test_smoothgrad_first_image_matches_alone(tiny_vit, tiny_images):
    """Noise is drawn image by image, so image 0 of a batch sees the noise a single-image call draws."""
    model = tiny_vit(depth=1)
    x = tiny_images(3)
    batched = explain(model, x, "smoothgrad", n_samples=3, generator=torch.Generator().manual_seed(2))
    single = explain(model, x[:1], "smoothgrad", n_samples=3, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(single.patch_maps, batched.patch_maps[:1], atol=1e-13, rtol=0)


@pytest.mark.parametrize("method", PIXEL_METHODS)
def test_patch_maps_sum_pool_the_pixel_maps(tiny_vit, tiny_images, method):
    model = tiny_vit(depth=1)
    exp = explain(model, tiny_images(2), method, **FAST[method])
    assert exp.patch_maps.shape == (2, 1, 2, 2) and exp.extras["pixel_maps"].shape == (2, 1, 8, 8)
    torch.testing.assert_close(exp.patch_maps, sum_pool(exp.extras["pixel_maps"], (4, 4)), atol=1e-14, rtol=0)
    torch.testing.assert_close(exp.patch_maps.sum((2, 3)), exp.extras["pixel_maps"].sum((2, 3)))


@pytest.mark.parametrize("method", PIXEL_METHODS)
def test_cnn_family(tiny_images, method):
    model = TinyCNN()
    x = tiny_images(2, img=10)
    exp = explain(model, x, method, patch_size=4, **FAST[method])
    assert exp.patch_maps.shape == (2, 1, 2, 2)  # ⌊10/4⌋ = 2; the remainder strip is dropped, like a patch embed
    torch.testing.assert_close(exp.patch_maps, exp.extras["pixel_maps"][..., :8, :8].reshape(2, 1, 2, 4, 2, 4)
                               .sum((3, 5)), atol=1e-14, rtol=0)
    if method == "input_x_gradient":
        torch.testing.assert_close(exp.extras["attributions"][:, 0], x * input_grad(model, x, exp.targets[:, 0]))
    assert explain(model, tiny_images(1, img=32), method, **FAST[method]).patch_maps.shape == (1, 1, 2, 2)  # p = 16
    model.train()
    with pytest.raises(RuntimeError, match="BatchNorm"), pytest.warns(UserWarning):
        explain(model, x, method, patch_size=4, **FAST[method])


def test_bad_options_raise():
    model = LinearModel()
    with pytest.raises(ValueError, match="channel_reduce"):
        InputXGradient(model, channel_reduce="max")
    with pytest.raises(ValueError, match="multi_target"):
        InputXGradient(model, multi_target="loop")
    with pytest.raises(ValueError, match="integration"):
        IntegratedGradients(model, integration="simpson")
    with pytest.raises(ValueError, match="baseline"):
        IntegratedGradients(model, baseline="white")
    with pytest.raises(ValueError, match="n_steps"):
        IntegratedGradients(model, integration="riemann_trapezoid", n_steps=1)
    with pytest.raises(ValueError, match="internal_batch_size"):
        SmoothGrad(model, internal_batch_size=0)
    with pytest.raises(ValueError, match="noise_level"):
        SmoothGrad(model, noise_level=-1.0)
    with pytest.raises(TypeError, match="Generator"):
        SmoothGrad(model, generator=3)
    with pytest.raises(ValueError, match="patch"):
        explain(model, torch.zeros(1, 3, 8, 8, dtype=f64), "input_x_gradient")  # default p = 16 > 8 px
