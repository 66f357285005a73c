"""`explain(..., amp=True)`: bf16 autocast on the CPU keeps every amp-safe method's maps within its registry
`amp_tolerance` of float32 (a fraction of the float32 map's range), refuses the amp-unsafe ones up front, and leaves
the default (float32) numbers untouched (docs/performance.md, "Mixed precision in explain").

Random ViT weights give near-uniform attention, whose maps have almost no contrast (range ≪ value) and lose it in
any 8-bit mantissa; `peaked` scales every block's q/k projections so that the attention scores have the spread of
a trained ViT's, which is what the tolerances are stated for. The trained TraitShapes ViT is checked too.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn

import traitlens as tl
from tests.conftest import make_tiny_native, make_tiny_vit
from traitlens.backbones.probe import AttentionProbe
from traitlens.explain import AmpUnsafeMethodError, _amp, explain, get_method, list_methods, register_method

#: Few samples / steps: the tolerance is per evaluation of the model, not per sample.
OPTIONS = {"smoothgrad": {"n_samples": 4}, "smooth_cdam": {"n_samples": 4}, "integrated_cdam": {"n_steps": 8}}
SAFE_VIT = [m.name for m in list_methods(family="vit") if m.amp_tolerance is not None]
UNSAFE = [m.name for m in list_methods() if m.amp_tolerance is None]


@pytest.fixture(autouse=True)
def bf16_cpu(monkeypatch):
    """Autocast to bf16 on any CPU (emulated where there are no bf16 units): the rounding is the same."""
    monkeypatch.setattr(_amp, "cpu_has_bf16", lambda: True)


def peaked(model: nn.Module, images: torch.Tensor, score_std: float = 2.0) -> nn.Module:
    """Scale the q and k rows of every block's qkv (first block first) so that its attention scores have standard
    deviation `score_std` on `images`, as in a trained ViT; random weights give scores with std ≪ 1."""
    vit = getattr(model, "backbone", model)  # the ViT of an interpretable model
    for i, blk in enumerate(vit.blocks):
        with torch.no_grad(), AttentionProbe(vit, blocks=[i], capture=("q", "k")) as probe:
            vit(images)
            std = float(probe.scores(i).std())
            D = blk.attn.qkv.in_features
            blk.attn.qkv.weight[: 2 * D] *= (score_std / std) ** 0.5
            blk.attn.qkv.bias[: 2 * D] *= (score_std / std) ** 0.5
    return model


def range_error(amp: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """max |amp − ref| / (max ref − min ref) per map, over the maps that are not constant in float32 (a constant
    map, e.g. Grad-CAM's ReLU of only negative evidence, has no range to compare against; `explain` flags it)."""
    a, r = amp.flatten(2).double(), ref.flatten(2).double()
    span = r.amax(-1) - r.amin(-1)
    live = span > 0
    assert live.float().mean() >= 0.5  # most maps are compared
    return (a - r).abs().amax(-1)[live] / span[live]


def amp_error(model: nn.Module, x: torch.Tensor, method: str, target: object = "topk:3") -> float:
    """The largest `range_error` between the float32 and the amp maps of the same targets."""
    opts = OPTIONS.get(method, {})
    torch.manual_seed(0)
    ref = explain(model, x, method, target=target, normalize="none", **opts)
    torch.manual_seed(0)
    got = explain(model, x, method, target=ref.targets, normalize="none", amp=True, **opts)
    assert got.extras["amp"] == "bfloat16" and "amp" not in ref.extras
    assert got.patch_maps.dtype == got.maps.dtype == torch.float32 and got.logits.dtype == torch.float32
    # bf16 did run: the logits moved (by far less than the maps' tolerance), the maps are not bit-equal
    assert 0 < float((got.logits - ref.logits).abs().max()) < 0.1 * float(ref.logits.abs().max())
    assert not torch.equal(got.patch_maps, ref.patch_maps)
    return float(range_error(got.patch_maps, ref.patch_maps).max())


def check(model: nn.Module, x: torch.Tensor, method: str) -> None:
    """The amp maps are within the method's registry tolerance of the float32 maps."""
    err, tol = amp_error(model, x, method), get_method(method).amp_tolerance
    assert tol is not None and err <= tol, f"{method}: {err:.3g} > {tol}"


@pytest.fixture(scope="module")
def vit_and_images():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 16, 16, generator=g)
    model = make_tiny_vit(depth=3, dim=32, heads=4, patch=4, img=16, num_classes=10, dtype=torch.float32)
    return peaked(model, x), x


@pytest.mark.parametrize("method", SAFE_VIT)
def test_amp_maps_within_tolerance_on_a_vit(vit_and_images, method):
    check(*vit_and_images, method)


@pytest.mark.parametrize("kind", ["promptcam", "intr", "scouter"])
def test_amp_native_maps_within_tolerance(kind):
    net, _ = make_tiny_native(kind, 3, **({"lambda_area": 0.5} if kind == "scouter" else {}))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    check(peaked(net, x), x, "native")


@pytest.mark.parametrize("method", [m.name for m in list_methods(family="cnn") if m.amp_tolerance is not None])
def test_amp_maps_within_tolerance_on_a_cnn(method):
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=5).eval()
    nn.init.normal_(model.get_classifier().weight, std=0.5)
    check(model, torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1)), method)  # 4×4 features


def test_amp_on_the_trained_vit(trained_traitshapes):
    """The tolerances hold on a ViT that learnt the traits (8 TraitShapes test images)."""
    model, _, test = trained_traitshapes
    x = tl.backbones.normalize(model, torch.stack([test[i]["image"] for i in range(8)]))
    errors = {m: amp_error(model, x, m) for m in SAFE_VIT}
    over = {m: round(e, 4) for m, e in errors.items() if e > get_method(m).amp_tolerance}
    assert not over, f"beyond the tolerance: {over}; all: {errors}"
    assert max(errors.values()) > 1e-3  # the comparison is not trivially exact


@pytest.mark.parametrize("method", UNSAFE)
def test_amp_unsafe_methods_are_refused_before_any_work(tiny_vit, method):
    model = tiny_vit(depth=1).float()
    calls: list[int] = []
    handle = model.patch_embed.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(AmpUnsafeMethodError, match=f"method '{method}' is amp-unsafe") as err:
            explain(model, torch.zeros(1, 3, 8, 8), method, amp=True)
    finally:
        handle.remove()
    assert calls == [] and "\n" not in str(err.value) and "cdam" in str(err.value)
    assert isinstance(err.value, ValueError)


def test_amp_off_is_the_float32_path(vit_and_images):
    model, x = vit_and_images
    for method in ("cdam", "rollout"):
        a, b = explain(model, x, method), explain(model, x, method, amp=False)
        assert torch.equal(a.maps, b.maps) and a.extras == b.extras and "amp" not in a.extras


def test_amp_without_bf16_units_warns_and_runs_float32(vit_and_images, monkeypatch, caplog):
    model, x = vit_and_images
    monkeypatch.setattr(_amp, "cpu_has_bf16", lambda: False)
    with caplog.at_level("WARNING", logger="traitlens.explain._amp"):
        got = explain(model, x, "cdam", amp=True)
    assert "no bfloat16 units" in caplog.text and "amp" not in got.extras
    assert torch.equal(got.maps, explain(model, x, "cdam").maps)


def test_amp_dtype_per_device(monkeypatch):
    assert _amp.amp_dtype(torch.device("cpu")) is torch.bfloat16  # patched: a CPU with bf16 units
    monkeypatch.setattr(_amp, "cpu_has_bf16", lambda: False)
    assert _amp.amp_dtype(torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    for major, dtype in ((7, torch.float16), (8, torch.bfloat16), (9, torch.bfloat16)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _i, m=major: (m, 0))
        assert _amp.amp_dtype(torch.device("cuda")) is dtype
    assert _amp.amp_dtype(torch.device("meta")) is None


def test_amp_must_be_a_bool(vit_and_images):
    with pytest.raises(TypeError, match="amp must be True or False"):
        explain(*vit_and_images, "cdam", amp="bf16")


def test_amp_tolerance_metadata():
    assert {"cdam", "gae", "agcam", "rollout", "native"} <= {m.name for m in list_methods()
                                                               if m.amp_tolerance is not None}
    assert {"lrp", "tam", "gradcam_vit", "integrated_cdam", "integrated_gradients", "smoothgrad",
            "input_x_gradient"} <= set(UNSAFE)
    assert all(m.amp_tolerance is None or 0 < m.amp_tolerance <= 1 for m in list_methods())
    with pytest.raises(ValueError, match="amp_tolerance"):
        register_method("bad_amp", signed=False, class_specific=False, needs_grad=False, default_upsample="nearest",
                        default_norm="none", cost="-", summary="-", amp_tolerance=2.0)
