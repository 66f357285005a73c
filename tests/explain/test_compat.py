"""Every registered method × the three by-design models: it runs with checked values, or it is refused up front
with `method_refusal`'s one line (posthoc.md §0 "Model families"). The methods enabled on Prompt-CAM are checked
against hand-written autograd versions of their definitions."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import traitlens as tl
from tests.conftest import make_tiny_vit
from traitlens.explain import (
    Concept,
    IncompatibleMethodError,
    explain,
    list_methods,
    method_refusal,
    model_families,
    supported_methods,
)
from traitlens.models import build_interpretable
from traitlens.quickstart import QUICK_MODEL_OPTIONS

KINDS = ("promptcam", "intr", "scouter")
C, B, IMG, GRID = 3, 2, 32, (4, 4)  # patch 8 on 32 px: a 4×4 grid
PIXEL = {"input_x_gradient", "integrated_gradients", "smoothgrad"}
FAST = {"integrated_gradients": {"n_steps": 4}, "smoothgrad": {"n_samples": 3}, "smooth_cdam": {"n_samples": 3},
        "integrated_cdam": {"n_steps": 4}}
TARGETS = torch.tensor([[0, 2], [1, 0]])
RUNS = {
    "promptcam": {"native", "cdam", "smooth_cdam", "integrated_cdam", "gradcam", "gradcam_vit", *PIXEL},
    "intr": {"native", "gradcam", *PIXEL},
    "scouter": {"native", "gradcam", *PIXEL},
}


def _backbone(depth: int = 2) -> nn.Module:
    return make_tiny_vit(depth=depth, dim=8, heads=2, patch=8, img=IMG, num_classes=C)


def _net(kind: str, depth: int = 2, **options) -> nn.Module:
    torch.manual_seed(0)
    opts = {**QUICK_MODEL_OPTIONS[kind], **options}
    if kind == "intr":
        opts.update(hidden_dim=16, nheads=2, dim_feedforward=32)
    net = build_interpretable(kind, _backbone(depth), C, class_names=["a", "b", "c"], pretrained=False, **opts)
    return net.double().eval()


@pytest.fixture(scope="module")
def nets() -> dict[str, nn.Module]:
    """The quick recipes (Prompt-CAM: shallow) and Prompt-CAM deep (the released code's variant)."""
    return {**{kind: _net(kind) for kind in KINDS}, "promptcam-deep": _net("promptcam", variant="deep")}


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(B, 3, IMG, IMG, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())


@pytest.mark.parametrize("kind", [*KINDS, "promptcam-deep"])
@pytest.mark.parametrize("method", [m.name for m in list_methods()])
def test_every_method_runs_with_checked_values_or_is_refused_up_front(nets, images, kind, method) -> None:
    net = nets[kind]
    kind = kind.split("-")[0]
    why = method_refusal(net, method)
    assert (why is None) == (method in RUNS[kind]), why
    if why is not None:
        with pytest.raises(IncompatibleMethodError) as err:
            explain(net, images, method=method, target=TARGETS, **FAST.get(method, {}))
        assert str(err.value) == why and "\n" not in why
        assert isinstance(err.value, ValueError)
        return
    exp = explain(net, images, method=method, target=TARGETS, **FAST.get(method, {}))
    grid = (2, 2) if method in PIXEL and kind != "promptcam" else GRID  # pixel methods pool 16 px off a ViT
    assert exp.maps.shape == (B, 2, IMG, IMG) and exp.patch_maps.shape == (B, 2, *grid)
    assert torch.isfinite(exp.maps).all() and torch.isfinite(exp.patch_maps).all()
    assert exp.targets.tolist() == TARGETS.tolist()
    with torch.no_grad():
        assert torch.allclose(exp.logits, net(images), atol=1e-12)
    raw = exp.patch_maps.flatten(2)
    assert (raw.amax(-1) > raw.amin(-1)).any(), "every map is constant"
    # Class-specific maps of different classes differ (image 0 explains classes 0 and 2, image 1 classes 1 and 0).
    assert not torch.allclose(exp.patch_maps[:, 0], exp.patch_maps[:, 1])
    if not tl.get_method(method).signed:
        assert (exp.patch_maps >= -1e-12).all()
    assert _no_hooks(net) and all(p.grad is None for p in net.parameters())


def test_refusal_names_method_model_needs_and_what_runs(nets) -> None:
    why = method_refusal(nets["promptcam"], "rollout")
    assert why is not None and why.startswith("method 'rollout' does not run on PromptCAM: it needs a timm "
                                              "VisionTransformer")
    assert "[vit]" in why and "PromptCAM offers native, logits, prompted_vit" in why
    assert why.endswith("methods that run on it: " + ", ".join(sorted(RUNS["promptcam"])))
    assert method_refusal(nets["intr"], "cdam").endswith("methods that run on it: " + ", ".join(sorted(RUNS["intr"])))
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        method_refusal(nets["intr"], "nope")
    # The old contract (a TypeError naming the need) still holds for callers that catch TypeError.
    with pytest.raises(TypeError, match="interpretable-by-design"):
        explain(_backbone(), torch.zeros(1, 3, IMG, IMG, dtype=torch.float64), method="native")


def test_supported_methods_per_kind_and_for_a_plain_vit(nets) -> None:
    for kind in KINDS:
        assert {m.name for m in supported_methods(nets[kind])} == RUNS[kind]
    vit = _backbone()
    assert model_families(vit) == ("vit", "logits")
    assert [m.name for m in supported_methods(vit)] == [m.name for m in list_methods(family="vit")]
    assert "native" not in {m.name for m in supported_methods(vit)}
    assert tl.supported_methods is supported_methods and tl.method_refusal is method_refusal


def test_families_are_read_from_declarations_and_parts() -> None:
    assert model_families(nn.Linear(2, 2)) == ("logits",)
    headless = make_tiny_vit(num_classes=0)
    assert model_families(headless) == ("vit",)  # no logits to differentiate
    assert method_refusal(headless, "cdam") is None  # concept targets need no logits
    cnn = nn.Module()
    cnn.forward_features, cnn.forward_head = (lambda x: x), (lambda x: x)
    assert model_families(cnn) == ("cnn", "logits")

    class Declared(nn.Linear):
        traitlens_families = ("cnn",)

    assert model_families(Declared(2, 2)) == ("cnn",)
    Declared.traitlens_families = "cnn"
    with pytest.raises(TypeError, match="tuple of family names"):
        model_families(Declared(2, 2))


# ---------------------------------------------------------------- Prompt-CAM against its definitions, by hand

def _last_block(net, images):
    """(x entering the last block, the block, Q + n_p): what the hand computations start from."""
    with torch.no_grad():
        x = net.last_block_input(images)
    return x, net.vit.blocks[-1], C + net.vit.num_prefix_tokens


def _block_rest(blk, x, attn_out):
    """timm Block after the attention output (LayerScale and drop-path are Identity here)."""
    z = x + attn_out
    return z + blk.mlp(blk.norm2(z))


def hand_cdam(net, images, c: int, x=None):
    """Σ_j T·∂s_c/∂T at the patch tokens, T = norm1(tokens entering the last block), s_c from c's prompt."""
    x0, blk, start = _last_block(net, images)
    x = x0 if x is None else x
    T = blk.norm1(x).detach().requires_grad_()
    s = net.score(_block_rest(blk, x, blk.attn(T))[:, :C])[:, c]
    (G,) = torch.autograd.grad(s.sum(), T)
    return (T * G).sum(-1)[:, start:].reshape(-1, *GRID)


def _attention(blk, T):
    a = blk.attn
    n, N, D = T.shape
    q, k, v = a.qkv(T).reshape(n, N, 3, a.num_heads, D // a.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
    return ((q * a.scale) @ k.transpose(-2, -1)).softmax(-1), v


@pytest.mark.parametrize("variant", ["deep", "shallow", "interpolated"])
def test_cdam_on_promptcam_is_the_gradient_times_input_of_its_logit(images, variant) -> None:
    opts = {"depth": 3, "class_from_block": 1} if variant == "interpolated" else {}
    net = _net("promptcam", variant=variant, **opts)
    assert net.variant == variant
    for multi in ("expand", "vjp"):
        exp = explain(net, images, method="cdam", target=TARGETS, multi_target=multi)
        for b in range(B):
            for k in range(2):
                hand = hand_cdam(net, images, int(TARGETS[b, k]))[b]
                assert torch.allclose(exp.patch_maps[b, k], hand, atol=1e-12)
    assert exp.patch_maps.abs().amax() > 0
    # The prefix (class prompts, then CLS) scores: the complement of the patch scores in Σ_all T·G.
    full = explain(net, images, method="cdam", target=0, exclude_prefix=False)
    assert full.extras["prefix_scores"].shape == (B, 1, C + 1)


@pytest.mark.parametrize("variant", ["deep", "shallow", "interpolated"])
def test_gradcam_vit_on_promptcam_reads_the_target_prompt_row(images, variant) -> None:
    opts = {"depth": 3, "class_from_block": 1} if variant == "interpolated" else {}
    net = _net("promptcam", variant=variant, **opts)
    x, blk, start = _last_block(net, images)
    exp = explain(net, images, method="gradcam_vit", target=TARGETS)
    vjp = explain(net, images, method="gradcam_vit", target=TARGETS, multi_target="vjp")
    assert torch.allclose(exp.patch_maps, vjp.patch_maps, atol=1e-15)
    tokens = explain(net, images, method="gradcam_vit", target=TARGETS, variant="tokens")
    classic = explain(net, images, method="gradcam", target=TARGETS)
    assert torch.equal(tokens.patch_maps, classic.patch_maps)  # classic Grad-CAM is the token variant here
    T0 = blk.norm1(x)
    A, v = _attention(blk, T0)
    for b in range(B):
        for k in range(2):
            c = int(TARGETS[b, k])
            # attn: w_h = mean_j ∂s_c/∂A_h[c, start+j], M = ReLU(mean_h(w_h·A_h[c, start:]))
            A_leaf = A.detach().requires_grad_()
            out = net.vit.blocks[-1].attn.proj((A_leaf @ v).transpose(1, 2).reshape(x.shape))
            (G,) = torch.autograd.grad(net.score(_block_rest(blk, x, out)[:, :C])[b, c], A_leaf)
            w = G[b, :, c, start:].mean(-1, keepdim=True)
            hand = F.relu((w * A[b, :, c, start:]).mean(0)).reshape(GRID)
            assert torch.allclose(exp.patch_maps[b, k], hand.detach(), atol=1e-15)
            # tokens: α_d = mean_p ∂s_c/∂T[start+p, d], M = ReLU(Σ_d α_d·T[start+p, d])
            T = T0.detach().requires_grad_()
            (g,) = torch.autograd.grad(net.score(_block_rest(blk, x, blk.attn(T))[:, :C])[b, c], T)
            alpha = g[b, start:].mean(0)
            hand_t = F.relu((T[b, start:] * alpha).sum(-1)).reshape(GRID)
            assert torch.allclose(tokens.patch_maps[b, k], hand_t.detach(), atol=1e-15)


@pytest.mark.parametrize("variant", ["deep", "shallow"])
def test_cdam_variants_on_promptcam(images, variant) -> None:
    net = _net("promptcam", variant=variant)
    vanilla = explain(net, images, method="cdam", target=TARGETS)
    smooth = explain(net, images, method="smooth_cdam", target=TARGETS, noise_level=0.0, n_samples=2)
    assert torch.allclose(smooth.patch_maps, vanilla.patch_maps, atol=1e-12)  # §3 oracle 1
    m = 4
    integ = explain(net, images, method="integrated_cdam", target=TARGETS, n_steps=m)
    x, _, _ = _last_block(net, images)
    for b in range(B):
        for k in range(2):
            c = int(TARGETS[b, k])
            hand = torch.stack([hand_cdam(net, images, c, x=(j / m) * x)[b] for j in range(1, m)]).mean(0)
            assert torch.allclose(integ.patch_maps[b, k], hand, atol=1e-12)
    with pytest.raises(ValueError, match="one latent per class token"):
        explain(net, images, method="cdam", target=Concept("v", torch.ones(8, dtype=torch.float64)))


@pytest.mark.parametrize("kind", KINDS)
def test_input_x_gradient_on_by_design_models_by_hand(nets, images, kind) -> None:
    net = nets[kind]
    exp = explain(net, images, method="input_x_gradient", target=TARGETS)
    for k in range(2):
        x = images.clone().requires_grad_()
        y = net(x).gather(1, TARGETS[:, k:k + 1]).sum()
        (g,) = torch.autograd.grad(y, x)
        assert torch.allclose(exp.extras["pixel_maps"][:, k], (x * g).mean(1).detach(), atol=1e-12)
