"""Grad-CAM for ViTs (posthoc.md §7) and classic Grad-CAM for CNNs: oracles, batching, hooks, pytorch-grad-cam."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from traitlens.backbones.trunk import trunk_forward
from traitlens.explain import explain, get_method
from traitlens.explain import gradcam as gradcam_mod
from traitlens.explain.gradcam import attn_cam, token_cam

# --------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------


def functional_block(blk: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A timm Block written out by hand from its weights: (output, T = norm1(x), A)."""
    B, N, D = x.shape
    H = blk.attn.num_heads
    dh = D // H
    t = F.layer_norm(x, (D,), blk.norm1.weight, blk.norm1.bias, blk.norm1.eps)
    if not t.requires_grad:
        t.requires_grad_()
    qkv = F.linear(t, blk.attn.qkv.weight, blk.attn.qkv.bias).reshape(B, N, 3, H, dh).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    a = (q @ k.transpose(-2, -1) * dh**-0.5).softmax(-1)
    o = (a @ v).transpose(1, 2).reshape(B, N, D)
    x = x + F.linear(o, blk.attn.proj.weight, blk.attn.proj.bias)
    h = F.layer_norm(x, (D,), blk.norm2.weight, blk.norm2.bias, blk.norm2.eps)
    h = F.linear(F.gelu(F.linear(h, blk.mlp.fc1.weight, blk.mlp.fc1.bias)), blk.mlp.fc2.weight, blk.mlp.fc2.bias)
    return x + h, t, a


def functional_logits(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """1-block model by hand on x^(0): (logits, T, A)."""
    x0 = trunk_forward(model, images, 0)
    out, t, a = functional_block(model.blocks[0], x0)
    logits = model.head(model.norm(out)[:, 0])
    return logits, t, a


def assert_clean(model: nn.Module, fused: list[bool] | None = None) -> None:
    """No hooks left anywhere, fused attention restored, no .grad on parameters."""
    for name, mod in model.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            assert not getattr(mod, attr, {}), f"{attr} left on {name or 'model'}"
    if fused is not None:
        assert [blk.attn.fused_attn for blk in model.blocks] == fused
    assert all(p.grad is None for p in model.parameters())


def fused_on(model: nn.Module) -> list[bool]:
    for blk in model.blocks:
        blk.attn.fused_attn = True
    return [True] * len(model.blocks)


# --------------------------------------------------------------------------------------------------------------
# Chefer's Grad-CAM-ViT oracles
# --------------------------------------------------------------------------------------------------------------


def test_registry_metadata():
    info = get_method("gradcam_vit")
    assert (info.signed, info.class_specific, info.needs_grad) == (False, True, True)
    assert (info.default_upsample, info.default_norm) == ("bilinear", "minmax")
    cnn = get_method("gradcam")
    assert "cnn" in cnn.families and "vit" in cnn.families


def test_attn_cam_hand_set_rows():
    a = torch.tensor([[[0.1, 0.2, 0.3, 0.4]]], dtype=torch.float64)  # [1, H=1, P]
    g = torch.tensor([[[1.0, -1.0, 2.0, 2.0]]], dtype=torch.float64)  # mean 1
    m, heads = attn_cam(a, g)
    torch.testing.assert_close(m, a[:, 0] * 1.0)
    torch.testing.assert_close(heads, a)
    m_neg, _ = attn_cam(a, -g)  # mean(g) < 0 → all zero
    assert torch.equal(m_neg, torch.zeros_like(m_neg))
    # Two heads: the ReLU comes after the head mean, so a negative head cancels a positive one.
    a2 = torch.stack([a[0, 0], a[0, 0].flip(0)]).unsqueeze(0)  # [1,2,P]
    g2 = torch.stack([torch.full((4,), 2.0), torch.full((4,), -1.0)]).to(torch.float64).unsqueeze(0)
    m2, _ = attn_cam(a2, g2)
    expected = F.relu((2 * a2[0, 0] - a2[0, 1]) / 2)
    torch.testing.assert_close(m2[0], expected)
    assert not torch.allclose(m2[0], (F.relu(2 * a2[0, 0]) + F.relu(-a2[0, 1])) / 2)


def test_one_head_negated_class_is_degenerate(tiny_vit, tiny_images):
    model = tiny_vit(depth=1, heads=1)
    x = tiny_images(2)
    exp = explain(model, x, "gradcam_vit", target=0)
    with torch.no_grad():
        model.head.weight[0].neg_()
        model.head.bias[0].neg_()
    neg = explain(model, x, "gradcam_vit", target=0)
    # One head: M = ReLU(w·a) with a > 0, so exactly one of the two maps is zero, and that one is degenerate.
    for b in range(2):
        pos_map, neg_map = exp.patch_maps[b, 0], neg.patch_maps[b, 0]
        assert (pos_map == 0).all() != (neg_map == 0).all()
        zero, other = (pos_map, neg_map) if (pos_map == 0).all() else (neg_map, pos_map)
        assert (other > 0).all()
        flags = exp.degenerate[b, 0] if zero is pos_map else neg.degenerate[b, 0]
        assert flags.item()


@pytest.mark.parametrize(("depth", "reg_tokens"), [(1, 0), (2, 0), (2, 2)])
def test_functional_autograd_cross_check(tiny_vit, tiny_images, depth, reg_tokens):
    model = tiny_vit(depth=depth, seed=3, reg_tokens=reg_tokens)
    n_p = 1 + reg_tokens
    assert model.num_prefix_tokens == n_p
    x = tiny_images(3)
    exp = explain(model, x, "gradcam_vit", target="topk:3")
    last = model.blocks[-1]
    x_in = trunk_forward(model, x, depth - 1)
    out, _, a = functional_block(last, x_in)
    logits = model.head(model.norm(out)[:, 0])
    torch.testing.assert_close(logits, model(x), atol=1e-12, rtol=0)
    for k in range(3):
        c = exp.targets[:, k]
        (g,) = torch.autograd.grad(logits.gather(1, c[:, None]).sum(), a, retain_graph=True)
        w = g[:, :, 0, n_p:].mean(-1, keepdim=True)
        m = F.relu((w * a[:, :, 0, n_p:]).mean(1)).detach()
        torch.testing.assert_close(exp.patch_maps[:, k].reshape(3, -1), m, atol=1e-12, rtol=1e-9)
        torch.testing.assert_close(exp.head_maps[:, k].reshape(3, 2, -1), (w * a[:, :, 0, n_p:]).detach())


def test_tokens_variant_functional(tiny_vit, tiny_images):
    model = tiny_vit(depth=1, seed=4)
    x = tiny_images(2)
    exp = explain(model, x, "gradcam_vit", target=[1, 2], variant="tokens")
    logits, t, _ = functional_logits(model, x)
    (g,) = torch.autograd.grad(logits.gather(1, exp.targets).sum(), t)
    alpha = g[:, 1:].mean(1, keepdim=True)
    m = F.relu((alpha * t[:, 1:]).sum(-1)).detach()
    torch.testing.assert_close(exp.patch_maps[:, 0].reshape(2, -1), m, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(token_cam(t[:, 1:].detach(), g[:, 1:]), m)


@pytest.mark.parametrize("variant", ["attn", "tokens"])
def test_trunk_split_equals_full_graph(tiny_vit, tiny_images, monkeypatch, variant):
    model = tiny_vit(depth=3, seed=5)
    x = tiny_images(2)
    split = explain(model, x, "gradcam_vit", target="topk:2", variant=variant)
    monkeypatch.setattr(gradcam_mod, "_last_block_split", lambda *_: None)  # no split: the full forward per row
    full = explain(model, x, "gradcam_vit", target="topk:2", variant=variant)
    torch.testing.assert_close(split.patch_maps, full.patch_maps, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(split.logits, full.logits)


@pytest.mark.parametrize("variant", ["attn", "tokens"])
def test_batched_targets_and_chunks(tiny_vit, tiny_images, variant):
    model = tiny_vit(depth=2, seed=6)
    x = tiny_images(3)
    ref = explain(model, x, "gradcam_vit", target="topk:3", variant=variant)
    for b in range(3):
        single = explain(model, x[b:b + 1], "gradcam_vit", target="topk:3", variant=variant)
        torch.testing.assert_close(single.patch_maps[0], ref.patch_maps[b], atol=1e-12, rtol=1e-9)
    vjp = explain(model, x, "gradcam_vit", target="topk:3", variant=variant, multi_target="vjp")
    torch.testing.assert_close(vjp.patch_maps, ref.patch_maps, atol=1e-12, rtol=1e-9)
    for k in range(3):
        one = explain(model, x, "gradcam_vit", target=ref.targets[:, k], variant=variant)
        torch.testing.assert_close(one.patch_maps[:, 0], ref.patch_maps[:, k], atol=1e-12, rtol=1e-9)
    for ibs in (1, 2, 4):
        chunked = explain(model, x, "gradcam_vit", target="topk:3", variant=variant, internal_batch_size=ibs)
        torch.testing.assert_close(chunked.patch_maps, ref.patch_maps, atol=1e-12, rtol=1e-9)
        assert torch.equal(chunked.targets, ref.targets)


@pytest.mark.parametrize("variant", ["attn", "tokens"])
def test_fixed_targets_follow_their_images_into_chunks(tiny_vit, tiny_images, variant):
    """Different fixed targets per image: every chunk must pick its own images' rows."""
    model = tiny_vit(depth=2, seed=8)
    x = tiny_images(3)
    targets = [[0, 1, 2], [2, 0, 1], [1, 2, 0]]
    ref = explain(model, x, "gradcam_vit", target=targets, variant=variant)
    assert torch.equal(ref.targets, torch.tensor(targets))
    for b in range(3):
        single = explain(model, x[b:b + 1], "gradcam_vit", target=[targets[b]], variant=variant)
        torch.testing.assert_close(single.patch_maps[0], ref.patch_maps[b], atol=1e-12, rtol=1e-9)
    for mode in ("vjp", "expand"):
        for ibs in (1, 3, 4):
            chunked = explain(model, x, "gradcam_vit", target=targets, multi_target=mode, internal_batch_size=ibs,
                              variant=variant)
            torch.testing.assert_close(chunked.patch_maps, ref.patch_maps, atol=1e-12, rtol=1e-9)
            assert torch.equal(chunked.targets, ref.targets)


@pytest.mark.parametrize("variant", ["attn", "tokens"])
def test_frozen_parameters_same_maps(tiny_vit, tiny_images, variant):
    """Frozen weights: the leaf rule makes the captured tensors differentiable and the maps do not change."""
    model = tiny_vit(depth=2, seed=9)
    x = tiny_images(2)
    ref = explain(model, x, "gradcam_vit", target="topk:2", variant=variant)
    model.requires_grad_(False)
    for mode in ("vjp", "expand"):
        frozen = explain(model, x, "gradcam_vit", target="topk:2", variant=variant, multi_target=mode)
        torch.testing.assert_close(frozen.patch_maps, ref.patch_maps, atol=1e-12, rtol=1e-9)


def test_hooks_removed_and_fused_restored(tiny_vit, tiny_images, monkeypatch):
    model = tiny_vit(depth=2)
    fused = fused_on(model)
    x = tiny_images(2)
    for variant in ("attn", "tokens"):
        explain(model, x, "gradcam_vit", target="topk:2", variant=variant)
        assert_clean(model, fused)

    def boom(*_args, **_kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(model.blocks[-1].mlp, "forward", boom)
    for variant in ("attn", "tokens"):
        with pytest.raises(RuntimeError, match="boom"):
            explain(model, x, "gradcam_vit", variant=variant)
        assert_clean(model, fused)


def test_mean_patches_and_options(tiny_vit, tiny_images):
    model = tiny_vit(depth=1)
    x = tiny_images(1)
    exp = explain(model, x, "gradcam_vit", query="mean_patches")
    assert exp.patch_maps.shape == (1, 1, 2, 2)
    with pytest.raises(ValueError, match="variant"):
        explain(model, x, "gradcam_vit", variant="nope")
    with pytest.raises(ValueError, match="multi_target"):
        explain(model, x, "gradcam_vit", multi_target="loop")
    with pytest.raises(RuntimeError, match="inference_mode"), torch.inference_mode():
        get_method("gradcam_vit").cls(model).attribute(x, None, "logit")


# --------------------------------------------------------------------------------------------------------------
# Classic Grad-CAM on a CNN
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_cnn():
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    with torch.no_grad():
        model.fc.weight.normal_(std=0.5)
    return model


def cnn_images(batch: int = 2, size: int = 96) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(2))


def test_cnn_gradcam_formula(tiny_cnn):
    x = cnn_images(2)
    exp = explain(tiny_cnn, x, "gradcam", target="topk:2")
    assert exp.patch_maps.shape == (2, 2, 3, 3) and exp.maps.shape == (2, 2, 96, 96)
    feats = tiny_cnn.forward_features(x)
    logits = tiny_cnn.forward_head(feats)
    torch.testing.assert_close(exp.logits, logits.detach())
    for k in range(2):
        (g,) = torch.autograd.grad(logits.gather(1, exp.targets[:, k:k + 1]).sum(), feats, retain_graph=True)
        m = F.relu((g.mean((2, 3), keepdim=True) * feats).sum(1)).detach()
        torch.testing.assert_close(exp.patch_maps[:, k], m, atol=1e-6, rtol=1e-4)
    assert (exp.patch_maps >= 0).all()


def test_cnn_batched_and_multi_target(tiny_cnn):
    x = cnn_images(3)
    ref = explain(tiny_cnn, x, "gradcam", target="topk:3")
    vjp = explain(tiny_cnn, x, "gradcam", target="topk:3", multi_target="vjp")
    torch.testing.assert_close(vjp.patch_maps, ref.patch_maps, atol=1e-6, rtol=1e-4)
    for b in range(3):
        single = explain(tiny_cnn, x[b:b + 1], "gradcam", target="topk:3")
        torch.testing.assert_close(single.patch_maps[0], ref.patch_maps[b], atol=1e-6, rtol=1e-4)
    for k in range(3):
        one = explain(tiny_cnn, x, "gradcam", target=ref.targets[:, k])
        torch.testing.assert_close(one.patch_maps[:, 0], ref.patch_maps[:, k], atol=1e-6, rtol=1e-4)
    chunked = explain(tiny_cnn, x, "gradcam", target="topk:3", internal_batch_size=2)
    torch.testing.assert_close(chunked.patch_maps, ref.patch_maps, atol=1e-6, rtol=1e-4)
    targets = [[0, 1, 2], [2, 0, 1], [1, 2, 0]]
    fixed = explain(tiny_cnn, x, "gradcam", target=targets)
    for mode in ("vjp", "expand"):
        chunked = explain(tiny_cnn, x, "gradcam", target=targets, internal_batch_size=1, multi_target=mode)
        torch.testing.assert_close(chunked.patch_maps, fixed.patch_maps, atol=1e-6, rtol=1e-4)
    for b in range(3):
        single = explain(tiny_cnn, x[b:b + 1], "gradcam", target=[targets[b]])
        torch.testing.assert_close(single.patch_maps[0], fixed.patch_maps[b], atol=1e-6, rtol=1e-4)
    assert_clean(tiny_cnn)


def test_cnn_batchnorm_train_mode_refused(tiny_cnn):
    tiny_cnn.train()
    before = tiny_cnn.bn1.running_mean.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="BatchNorm"):
            explain(tiny_cnn, cnn_images(2), "gradcam")
    # Refused before any forward: the running statistics are untouched.
    assert torch.equal(tiny_cnn.bn1.running_mean, before)


def test_vit_dispatches_to_tokens_variant(tiny_vit, tiny_images):
    model = tiny_vit(depth=2)
    x = tiny_images(2)
    a = explain(model, x, "gradcam", target="topk:2")
    b = explain(model, x, "gradcam_vit", target="topk:2", variant="tokens")
    torch.testing.assert_close(a.patch_maps, b.patch_maps)


# --------------------------------------------------------------------------------------------------------------
# Peer agreement with pytorch-grad-cam
# --------------------------------------------------------------------------------------------------------------


def _their_cam(model, layer, x, classes, reshape_transform=None):
    """pytorch-grad-cam's output and its ReLU'd map before min-max/resize (`get_cam_image`)."""
    from pytorch_grad_cam import GradCAM as PGCGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    with PGCGradCAM(model=model, target_layers=[layer], reshape_transform=reshape_transform) as cam:
        out = cam(input_tensor=x, targets=targets)
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        raw = np.maximum(cam.get_cam_image(x, layer, targets, acts, grads), 0)
    model.zero_grad(set_to_none=True)  # pytorch-grad-cam calls loss.backward(), which fills .grad
    return torch.from_numpy(np.asarray(out)), torch.from_numpy(np.asarray(raw))


def test_peer_pytorch_grad_cam_cnn(tiny_cnn):
    x = cnn_images(2)
    classes = [0, 2]
    ours = explain(tiny_cnn, x, "gradcam", target=classes)
    assert not ours.degenerate.any()
    out, raw = _their_cam(tiny_cnn, tiny_cnn.layer4[-1], x, classes)
    scale = raw.abs().max()
    torch.testing.assert_close(ours.patch_maps[:, 0].float(), raw.float(), atol=1e-4 * scale, rtol=1e-4)
    torch.testing.assert_close(ours.maps[:, 0].float(), out.float(), atol=1e-4, rtol=0)
    again = explain(tiny_cnn, x, "gradcam", target=classes)
    torch.testing.assert_close(again.patch_maps, ours.patch_maps)
    assert_clean(tiny_cnn)


@pytest.mark.parametrize("img", [(16, 16), (8, 16)])  # 4×4 and a non-square 2×4 grid
def test_peer_pytorch_grad_cam_vit(tiny_vit, img):
    model = tiny_vit(depth=2, img=img, dtype=torch.float32, seed=7)
    x = torch.randn(2, 3, *img, generator=torch.Generator().manual_seed(3))
    n_p, (g_h, g_w) = model.num_prefix_tokens, model.patch_embed.grid_size

    def reshape_transform(t: torch.Tensor) -> torch.Tensor:
        return t[:, n_p:].reshape(t.shape[0], g_h, g_w, t.shape[2]).permute(0, 3, 1, 2)

    classes = [1, 0]
    ours = explain(model, x, "gradcam_vit", target=classes, variant="tokens")
    assert not ours.degenerate.any()
    out, raw = _their_cam(model, model.blocks[-1].norm1, x, classes, reshape_transform)
    scale = raw.abs().max()
    torch.testing.assert_close(ours.patch_maps[:, 0], raw.float(), atol=1e-4 * scale, rtol=1e-4)
    torch.testing.assert_close(ours.maps[:, 0], out.float(), atol=1e-4, rtol=0)
    again = explain(model, x, "gradcam_vit", target=classes, variant="tokens")
    torch.testing.assert_close(again.patch_maps, ours.patch_maps)
    assert_clean(model)
