"""The registry flag `batched_targets`: a method that declares it runs the network's trunk (patch embedding and the
blocks below the last) on the same rows whatever the number of targets K, so a 200-class atlas costs the forwards of
one target per image; a method without it widens or repeats those passes per target. Counted with hooks on the
patch embedding and the first block, for every registered method."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn as nn

from tests.conftest import make_tiny_native
from traitlens.explain import explain, get_method, list_methods

OPTIONS = {"smoothgrad": {"n_samples": 2}, "smooth_cdam": {"n_samples": 2}, "integrated_cdam": {"n_steps": 2},
           "integrated_gradients": {"n_steps": 2}}


@contextmanager
def trunk_passes(vit: nn.Module) -> Iterator[dict[str, list[int]]]:
    """Rows of every call of `vit.patch_embed` ("embed") and `vit.blocks[0]` ("block0") inside the block."""
    seen: dict[str, list[int]] = {"embed": [], "block0": []}
    handles = [vit.patch_embed.register_forward_pre_hook(lambda _m, a: seen["embed"].append(int(a[0].shape[0]))),
               vit.blocks[0].register_forward_pre_hook(lambda _m, a: seen["block0"].append(int(a[0].shape[0])))]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def passes_for(model: nn.Module, vit: nn.Module, x: torch.Tensor, method: str, k: int) -> dict[str, list[int]]:
    with trunk_passes(vit) as seen:
        explain(model, x, method, target=f"topk:{k}", **OPTIONS.get(method, {}))
    return seen


@pytest.mark.parametrize("method", [m.name for m in list_methods(family="vit")])
def test_flag_matches_the_trunk_passes(tiny_vit, tiny_images, method):
    model = tiny_vit(depth=2, num_classes=6)
    x = tiny_images(2)
    one, five = passes_for(model, model, x, method, 1), passes_for(model, model, x, method, 5)
    if get_method(method).batched_targets:
        assert five == one
        assert five["embed"] == [2]  # the images enter the network once, in one pass
    else:  # some trunk pass carries (image, target) rows
        assert sum(five["embed"]) > sum(one["embed"])


@pytest.mark.parametrize("kind", ["promptcam", "intr", "scouter"])
def test_native_maps_of_every_target_come_from_one_forward(kind):
    net, backbone = make_tiny_native(kind)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert get_method("native").batched_targets
    for k in (1, 5):
        assert passes_for(net, backbone, x, "native", k) == {"embed": [3], "block0": [3]}
    five = explain(net, x, "native", target="topk:5", normalize="none")
    one = explain(net, x, "native", target=five.targets[:, 3], normalize="none")  # one target alone: same map
    torch.testing.assert_close(one.patch_maps[:, 0], five.patch_maps[:, 3], atol=1e-6, rtol=0)
