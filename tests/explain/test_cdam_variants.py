"""Smooth CDAM and Integrated CDAM (posthoc.md §3): oracles 1–3, hand checks on the U fixture, presets, batching."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from traitlens.backbones.trunk import trunk_forward
from traitlens.explain import TargetSpec, explain, get_method
from traitlens.explain._concept import Concept
from traitlens.explain.integrated_cdam import IntegratedCDAM
from traitlens.explain.smooth_cdam import SmoothCDAM


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _u_gradient(model, c: int) -> torch.Tensor:
    """On the U fixture ∂f_c/∂T_i = (1/N) W_Vᵀ W_Oᵀ w_c for every token, whatever the input."""
    blk, D = model.blocks[0], model.embed_dim
    N = model.patch_embed.num_patches + model.num_prefix_tokens
    return (blk.attn.qkv.weight[2 * D:3 * D].T @ blk.attn.proj.weight.T @ model.head.weight[c]).detach() / N


def _noise(base: torch.Tensor, m: int, level: float, seed: int) -> torch.Tensor:
    """ε [B,m,N,D]: image b draws [m,N,D] from its own generator, σ_b = level·(max − min) of base_b."""
    out = []
    for b in range(base.shape[0]):
        sigma = level * (base[b].max() - base[b].min())
        out.append(torch.randn((m, *base.shape[1:]), generator=_gen(seed + b), dtype=base.dtype) * sigma)
    return torch.stack(out)


# ---------------------------------------------------------------- oracle 1: no noise = vanilla

@pytest.mark.parametrize("preset", [None, "obzai"])
@pytest.mark.parametrize("multi_target", ["expand", "vjp"])
def test_smooth_without_noise_equals_vanilla(tiny_vit, tiny_images, preset, multi_target) -> None:
    model = tiny_vit(depth=2)
    images = tiny_images(3)
    ref = explain(model, images, method="cdam", target="topk:2")
    got = explain(model, images, method="smooth_cdam", target="topk:2", noise_level=0.0, n_samples=3,
                  preset=preset, multi_target=multi_target, internal_batch_size=5)
    torch.testing.assert_close(got.patch_maps, ref.patch_maps, atol=1e-12, rtol=0)
    assert torch.equal(got.targets, ref.targets)
    torch.testing.assert_close(got.logits, ref.logits)


def test_smooth_without_noise_equals_vanilla_for_concepts(tiny_vit, tiny_images) -> None:
    model = tiny_vit(depth=2)
    images = tiny_images(2)
    concept = Concept.from_images(model, tiny_images(2, seed=9), "c", similarity="cosine")
    ref = explain(model, images, method="cdam", target=concept).patch_maps
    got = explain(model, images, method="smooth_cdam", target=concept, noise_level=0.0, n_samples=2).patch_maps
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)


# ---------------------------------------------------------------- oracle 2: U fixture, integrated = vanilla

def test_integrated_equals_vanilla_on_u_fixture(uniform_vit, tiny_images) -> None:
    model = uniform_vit(depth=1)
    images = tiny_images(3)
    ref = explain(model, images, method="cdam", target="topk:3").patch_maps
    got = explain(model, images, method="integrated_cdam", target="topk:3").patch_maps
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    assert (got - ref).abs().max() < 1e-3 * ref.abs().max()  # the maps are small; also close relative to size


# ---------------------------------------------------------------- hand checks of noise and schedules (U fixture)

@pytest.mark.parametrize("method", ["smooth", "integrated"])
def test_block_input_noise_by_hand_on_u_fixture(uniform_vit, tiny_images, method) -> None:
    model = uniform_vit(depth=1)
    images = tiny_images(2)
    c, m, level = 1, 4, 0.1
    x = trunk_forward(model, images, 0)
    if method == "smooth":
        alphas = torch.ones(m, dtype=x.dtype)
        exp = explain(model, images, method="smooth_cdam", target=c, n_samples=m, noise_level=level,
                      generator=[_gen(10), _gen(11)])
    else:
        alphas = torch.arange(1, m, dtype=x.dtype) / m  # k = 1..m−1; k = 0 dropped
        exp = explain(model, images, method="integrated_cdam", target=c, n_steps=m, noise_level=level,
                      generator=[_gen(10), _gen(11)])
    eps = _noise(x, len(alphas), level, seed=10)
    with torch.no_grad():
        T = model.blocks[0].norm1(alphas.view(1, -1, 1, 1) * x.unsqueeze(1) + eps)  # [B,m,N,D]
    expected = (T @ _u_gradient(model, c)).mean(1)[:, 1:]
    torch.testing.assert_close(exp.patch_maps.reshape(2, -1), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("method", ["smooth", "integrated"])
def test_obzai_preset_by_hand_on_u_fixture(uniform_vit, tiny_images, method) -> None:
    """'obzai': noise on T, σ from T's range; integrated scales T with α = i/n, i = 0..n, all averaged."""
    model = uniform_vit(depth=1)
    images = tiny_images(2)
    c, n = 2, 3
    with torch.no_grad():
        T = model.blocks[0].norm1(trunk_forward(model, images, 0))
    name = "smooth_cdam" if method == "smooth" else "integrated_cdam"
    count = {"n_samples": n} if method == "smooth" else {"n_steps": n}
    exp = explain(model, images, method=name, target=c, preset="obzai", generator=[_gen(3), _gen(4)], **count)
    alphas = torch.ones(n, dtype=T.dtype) if method == "smooth" else torch.arange(n + 1, dtype=T.dtype) / n
    T_tilde = alphas.view(1, -1, 1, 1) * T.unsqueeze(1) + _noise(T, len(alphas), 0.05, seed=3)
    expected = (T_tilde @ _u_gradient(model, c)).mean(1)[:, 1:]
    torch.testing.assert_close(exp.patch_maps.reshape(2, -1), expected, atol=1e-12, rtol=0)
    assert exp.extras["inject_at"] == "norm1_output"


def test_obzai_integrated_without_noise_is_half_vanilla_on_u_fixture(uniform_vit, tiny_images) -> None:
    """G is constant on U, so mean_i (i/n)·T·G = ½·T·G."""
    model = uniform_vit(depth=1)
    images = tiny_images(2)
    ref = explain(model, images, method="cdam", target="topk:2").patch_maps
    got = explain(model, images, method="integrated_cdam", target="topk:2", preset="obzai", noise_level=0.0,
                  n_steps=5).patch_maps
    torch.testing.assert_close(got, ref / 2, atol=1e-12, rtol=0)


def test_norm1_output_injection_keeps_the_residual_clean(tiny_vit, tiny_images) -> None:
    """Scaling T (not x) on a general model: the block's residual still carries the clean x^(L−1)."""
    model = tiny_vit(depth=2)
    images = tiny_images(2)
    x = trunk_forward(model, images, 1)
    blk = model.blocks[-1]
    n = 2
    maps = []
    for i in range(n + 1):
        t = (i / n * blk.norm1(x)).detach().requires_grad_()
        z = x + blk.attn(t)
        z = z + blk.mlp(blk.norm2(z))
        y = model.forward_head(model.norm(z))[:, 0].sum()
        (G,) = torch.autograd.grad(y, t)
        maps.append((t * G).sum(-1).detach())
    expected = torch.stack(maps).mean(0)[:, 1:]
    got = explain(model, images, method="integrated_cdam", target=0, preset="obzai", noise_level=0.0, n_steps=n)
    torch.testing.assert_close(got.patch_maps.reshape(2, -1), expected, atol=1e-12, rtol=0)


# ---------------------------------------------------------------- oracle 3: seeds and batching

@pytest.mark.parametrize("name", ["smooth_cdam", "integrated_cdam"])
def test_fixed_seed_reproduces_and_batched_equals_per_image(tiny_vit, tiny_images, name) -> None:
    model = tiny_vit(depth=2)
    images = tiny_images(3)
    opts = {"noise_level": 0.1, "internal_batch_size": 7}
    opts |= {"n_samples": 5} if name == "smooth_cdam" else {"n_steps": 5}
    a = explain(model, images, method=name, target="topk:2", generator=[_gen(s) for s in (1, 2, 3)], **opts)
    b = explain(model, images, method=name, target="topk:2", generator=[_gen(s) for s in (1, 2, 3)], **opts)
    assert torch.equal(a.patch_maps, b.patch_maps)
    for i, s in enumerate((1, 2, 3)):
        single = explain(model, images[i:i + 1], method=name, target="topk:2", generator=[_gen(s)], **opts)
        torch.testing.assert_close(single.patch_maps[0], a.patch_maps[i], atol=1e-12, rtol=0)
    other = explain(model, images, method=name, target="topk:2", generator=[_gen(s) for s in (4, 5, 6)], **opts)
    assert not torch.allclose(other.patch_maps, a.patch_maps)


def test_single_generator_is_consumed_image_by_image(tiny_vit, tiny_images) -> None:
    model = tiny_vit(depth=2)
    images = tiny_images(2)
    batched = explain(model, images, method="smooth_cdam", target=1, n_samples=3, generator=_gen(0)).patch_maps
    g = _gen(0)
    seq = [explain(model, images[i:i + 1], method="smooth_cdam", target=1, n_samples=3, generator=g).patch_maps
           for i in range(2)]
    torch.testing.assert_close(torch.cat(seq), batched, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ["smooth_cdam", "integrated_cdam"])
def test_expand_vjp_loop_and_chunking_agree(tiny_vit, tiny_images, name) -> None:
    model = tiny_vit(depth=2)
    images = tiny_images(2)
    targets = torch.tensor([[2, 0, 1], [0, 1, 1]])
    opts = {"noise_level": 0.05}
    opts |= {"n_samples": 4} if name == "smooth_cdam" else {"n_steps": 4}

    def run(target, **kw):
        return explain(model, images, method=name, target=target, generator=[_gen(8), _gen(9)], **opts, **kw)

    ref = run(targets, multi_target="expand", internal_batch_size=None).patch_maps
    for kw in ({"multi_target": "expand", "internal_batch_size": 1}, {"multi_target": "expand",
               "internal_batch_size": 5}, {"multi_target": "vjp", "internal_batch_size": None},
               {"multi_target": "vjp", "internal_batch_size": 3}):
        torch.testing.assert_close(run(targets, **kw).patch_maps, ref, atol=1e-12, rtol=0)
    loop = torch.stack([run(targets[:, k]).patch_maps[:, 0] for k in range(3)], dim=1)
    torch.testing.assert_close(loop, ref, atol=1e-12, rtol=0)


def test_noise_changes_the_map_and_varies_per_image(tiny_vit, tiny_images) -> None:
    model = tiny_vit(depth=2)
    images = tiny_images(2)
    vanilla = explain(model, images, method="cdam", target=0).patch_maps
    smooth = explain(model, images, method="smooth_cdam", target=0, n_samples=4, generator=_gen(0)).patch_maps
    assert not torch.allclose(vanilla, smooth)


# ---------------------------------------------------------------- options, metadata, state

@pytest.mark.parametrize("cls, opts", [
    (SmoothCDAM, {"preset": "captum"}), (SmoothCDAM, {"inject_at": "qkv"}), (SmoothCDAM, {"n_samples": 0}),
    (SmoothCDAM, {"noise_level": -0.1}), (SmoothCDAM, {"generator": 3}), (SmoothCDAM, {"multi_target": "x"}),
    (IntegratedCDAM, {"n_steps": 1}), (IntegratedCDAM, {"internal_batch_size": 0}),
])
def test_bad_options(tiny_vit, cls, opts) -> None:
    with pytest.raises((ValueError, TypeError)):
        cls(tiny_vit(depth=1), **opts)


def test_generator_count_must_match_batch(tiny_vit, tiny_images) -> None:
    with pytest.raises(ValueError, match="one per image"):
        explain(tiny_vit(depth=1), tiny_images(2), method="smooth_cdam", n_samples=2, generator=[_gen(0)])


def test_preset_defaults() -> None:
    model = nn.Module()
    assert SmoothCDAM(model).noise_level == 0.05 and SmoothCDAM(model).inject_at == "block_input"
    obz = SmoothCDAM(model, preset="obzai")
    assert (obz.noise_level, obz.inject_at, obz.n) == (0.05, "norm1_output", 50)
    integ = IntegratedCDAM(model)
    assert (integ.noise_level, integ.inject_at, len(integ.alphas())) == (0.0, "block_input", 49)
    assert integ.alphas()[0] == pytest.approx(1 / 50)
    obz = IntegratedCDAM(model, preset="obzai", n_steps=4)
    assert (obz.noise_level, obz.inject_at, obz.alphas()) == (0.05, "norm1_output", [0, 0.25, 0.5, 0.75, 1.0])
    assert IntegratedCDAM(model, preset="obzai", inject_at="block_input").inject_at == "block_input"


@pytest.mark.parametrize("name", ["smooth_cdam", "integrated_cdam"])
def test_registry_metadata(name) -> None:
    info = get_method(name)
    assert (info.signed, info.class_specific, info.needs_grad, info.concept) == (True, True, True, True)
    assert (info.default_norm, info.default_upsample) == ("none", "nearest")


def _assert_clean(model) -> None:
    for name, mod in model.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            assert not getattr(mod, attr), f"{name}.{attr} left behind"
    assert all(p.grad is None for p in model.parameters())


class _FailOnSecondCall(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("boom")
        return x


@pytest.mark.parametrize("preset", [None, "obzai"])
def test_hooks_removed_even_when_the_pass_fails(tiny_vit, tiny_images, preset) -> None:
    model = tiny_vit(depth=2)
    for blk in model.blocks:
        blk.attn.fused_attn = True
    explain(model, tiny_images(2), method="smooth_cdam", target="topk:2", n_samples=2, preset=preset)
    explain(model, tiny_images(2), method="integrated_cdam", target="topk:2", n_steps=3, preset=preset,
            multi_target="vjp")
    _assert_clean(model)
    assert all(blk.attn.fused_attn for blk in model.blocks)
    model.fc_norm = _FailOnSecondCall()  # the clean pass succeeds, the first perturbed pass (with T replaced) fails
    with pytest.raises(RuntimeError, match="boom"):
        explain(model, tiny_images(2), method="smooth_cdam", n_samples=2, preset=preset)
    _assert_clean(model)


def test_inference_mode_raises(tiny_vit, tiny_images) -> None:
    model = tiny_vit(depth=1)
    with torch.inference_mode():
        for cls in (SmoothCDAM, IntegratedCDAM):
            with pytest.raises(RuntimeError, match="inference_mode"):
                cls(model).attribute(tiny_images(1), TargetSpec(None, 1, 3))
