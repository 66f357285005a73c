"""Gradient methods enable gradients themselves: under a caller's `torch.no_grad()` they give the same maps."""

from __future__ import annotations

import inspect

import pytest
import torch

from traitlens.explain import explain, get_method, list_methods

GRADIENT_METHODS = [m.name for m in list_methods() if m.needs_grad and "vit" in m.families]


def test_the_list_covers_the_methods_that_used_to_fail() -> None:
    assert {"lrp", "input_x_gradient", "integrated_gradients", "smoothgrad", "cdam", "agcam"} <= set(GRADIENT_METHODS)


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_same_maps_under_no_grad(method, tiny_vit, tiny_images) -> None:
    model, x = tiny_vit(depth=2), tiny_images(2)
    options: list[dict] = [{}]
    if "multi_target" in inspect.signature(get_method(method).cls).parameters:
        options.append({"multi_target": "vjp"})
    for target in ("top1", "topk:2"):
        for opts in options:
            torch.manual_seed(0)  # the noise of smoothgrad / smooth_cdam
            ref = explain(model, x, method=method, target=target, **opts)
            torch.manual_seed(0)
            with torch.no_grad():
                got = explain(model, x, method=method, target=target, **opts)
                assert not torch.is_grad_enabled()  # the method restored the caller's mode
            assert torch.equal(got.targets, ref.targets)
            assert torch.equal(got.patch_maps, ref.patch_maps), (target, opts)
            assert torch.equal(got.maps, ref.maps), (target, opts)
