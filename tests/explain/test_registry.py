"""Every registered method, through the one entry point: families, batching, hygiene, misuse (style.md: tests
parametrised over the registry, so a new method is tested by registering it)."""

from __future__ import annotations

import gc
import resource

import pytest
import timm
import torch

import traitlens as tl
from traitlens.explain import explain, list_methods

SMALL = {"pretrained": False, "img_size": 16, "patch_size": 4, "embed_dim": 16, "depth": 2, "num_heads": 2,
         "num_classes": 4}
# Cheap settings for the many-pass methods; their defaults are tested in their own files.
FAST = {"integrated_gradients": {"n_steps": 4}, "smoothgrad": {"n_samples": 3},
        "smooth_cdam": {"n_samples": 3}, "integrated_cdam": {"n_steps": 4}}
RANDOM = {"smoothgrad", "smooth_cdam"}
VIT_METHODS = [m.name for m in list_methods(family="vit")]
# Documented refusals (posthoc.md §9: LRP is limited to standard single-head-token timm ViTs).
UNSUPPORTED = {("lrp", "deit_distilled")}


def _model(family: str) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    name, extra, size = {
        "vit": ("vit_tiny_patch16_224", {}, (16, 16)),
        "deit_distilled": ("deit_tiny_distilled_patch16_224", {}, (16, 16)),
        "registers": ("vit_tiny_patch16_224", {"reg_tokens": 2}, (16, 16)),
        "non_square": ("vit_tiny_patch16_224", {"dynamic_img_size": True}, (16, 24)),
    }[family]
    model = timm.create_model(name, **SMALL, **extra).double().eval()
    for head in (model.head, getattr(model, "head_dist", None)):
        if head is not None:
            torch.nn.init.normal_(head.weight, std=0.5)
    return model, torch.randn(3, 3, *size, dtype=torch.float64)


def _no_hooks(model: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())


def test_registry_lists_metadata() -> None:
    infos = {m.name: m for m in list_methods()}
    for expected in ("cdam", "agcam", "raw_attention", "rollout", "gradcam_vit", "gae", "tam", "input_x_gradient",
                     "integrated_gradients", "smoothgrad", "lrp", "smooth_cdam", "integrated_cdam", "gradcam"):
        assert expected in infos, expected
    assert infos["cdam"].signed and infos["cdam"].class_specific and infos["cdam"].concept
    assert not infos["rollout"].class_specific and not infos["rollout"].needs_grad
    assert [m.name for m in list_methods("*cdam*")] == ["cdam", "integrated_cdam", "smooth_cdam"]


@pytest.mark.parametrize("family", ["vit", "deit_distilled", "registers", "non_square"])
@pytest.mark.parametrize("method", VIT_METHODS)
def test_every_method_runs_on_every_family(method: str, family: str) -> None:
    model, x = _model(family)
    if (method, family) in UNSUPPORTED:
        with pytest.raises(NotImplementedError, match="VisionTransformerDistilled"):
            explain(model, x, method=method)
        assert _no_hooks(model)
        return
    exp = explain(model, x, method=method, target="topk:2", **FAST.get(method, {}))
    layout = tl.backbones.vit_layout(model, tuple(x.shape[-2:]))
    assert exp.maps.shape == (3, 2, *x.shape[-2:])
    assert exp.patch_maps.shape == (3, 2, *layout.grid)
    assert torch.isfinite(exp.maps).all() and torch.isfinite(exp.patch_maps).all()
    with torch.no_grad():
        assert exp.targets.tolist() == model(x).topk(2, dim=-1).indices.tolist()
    assert exp.method == method
    if not tl.get_method(method).signed:
        assert (exp.patch_maps >= -1e-12).all()
    assert _no_hooks(model)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method", sorted(set(VIT_METHODS) - RANDOM))
def test_batch_equals_single_images_and_targets_equal_loop(method: str) -> None:
    model, x = _model("vit")
    opts = FAST.get(method, {})
    targets = torch.tensor([[0, 3], [2, 1], [1, 1]])
    batched = explain(model, x, method=method, target=targets, **opts)
    for b in range(3):
        for k in range(2):
            single = explain(model, x[b:b + 1], method=method, target=int(targets[b, k]), **opts)
            assert torch.allclose(batched.patch_maps[b, k], single.patch_maps[0, 0], atol=1e-8, rtol=1e-6), (b, k)


@pytest.mark.parametrize("method", VIT_METHODS)
def test_class_specific_methods_depend_on_the_target(method: str) -> None:
    model, x = _model("vit")
    exp = explain(model, x, method=method, target=[[0, 1]] * 3, **FAST.get(method, {}))
    differs = not torch.allclose(exp.patch_maps[:, 0], exp.patch_maps[:, 1])
    assert differs == tl.get_method(method).class_specific


def test_misuse_gets_clear_errors() -> None:
    model, x = _model("vit")
    with pytest.raises(ValueError, match=r"unknown method 'cdm'.*cdam"):
        explain(model, x, method="cdm")
    with pytest.raises(ValueError, match="target 9 out of range for a model with 4 classes"):
        explain(model, x, method="cdam", target=9)
    with pytest.raises(ValueError, match="class name but the model carries no class names"):
        explain(model, x, method="cdam", target="heron")
    model.class_names = ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="unknown class name 'heron'"):
        explain(model, x, method="cdam", target="heron")
    assert explain(model, x, method="cdam", target="c").targets.tolist() == [[2]] * 3
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        explain(model, x, method="cdam")
    with pytest.raises(ValueError, match="one entry per image"):
        explain(model, x, method="cdam", target=[0, 1])
    with pytest.raises(TypeError, match="unknown options: bogus"):
        explain(model, x, method="rollout", bogus=1)


def test_training_mode_warns() -> None:
    model, x = _model("vit")
    model.train()
    with pytest.warns(UserWarning, match="training mode"):
        explain(model, x, method="raw_attention")


def test_no_leak_after_many_explanations() -> None:
    model, x = _model("vit")
    methods = ["cdam", "agcam", "gae", "gradcam_vit", "rollout"]

    def rss_mb() -> float:
        gc.collect()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    for m in methods:  # warm-up: allocator pools, lazily created modules
        explain(model, x, method=m)
    before = rss_mb()
    for i in range(200):
        explain(model, x, method=methods[i % len(methods)])
    assert _no_hooks(model)
    assert all(p.grad is None for p in model.parameters())
    assert rss_mb() - before < 50  # peak RSS does not climb with the number of calls


def test_numpy_integer_targets_are_accepted() -> None:
    import numpy as np

    model, x = _model("vit")
    exp = explain(model, x, method="cdam", target=[np.int64(1), 2, np.int32(3)])
    assert exp.targets.tolist() == [[1], [2], [3]]
    with pytest.raises(TypeError, match="bool"):
        explain(model, x, method="cdam", target=True)
