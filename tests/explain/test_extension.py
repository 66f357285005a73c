"""The public extension point: a new method is one `Explainer` / `GradientExplainer` subclass and one decorator."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pytest
import torch

from traitlens.backbones.introspect import ViTLayout
from traitlens.backbones.probe import AttentionProbe
from traitlens.explain import (
    Attribution,
    ChunkMaps,
    Explainer,
    GradientChunk,
    GradientExplainer,
    MethodInfo,
    TargetSpec,
    explain,
    get_method,
    list_methods,
    register_method,
)
from traitlens.explain._registry import _METHODS
from traitlens.explain.agcam import AGCAM
from traitlens.explain.gae import GAE
from traitlens.explain.gradcam import GradCAM, GradCAMViT


@pytest.fixture
def registered() -> Iterator[list[str]]:
    """Names registered by a test, removed from the registry afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        _METHODS.pop(name, None)


def test_public_names():
    tx = importlib.import_module("traitlens.explain")  # `traitlens.explain` the attribute is the function
    for name in ("Explainer", "GradientExplainer", "GradientChunk", "ChunkMaps", "Attribution", "MethodInfo",
                 "TargetSpec", "register_method"):
        assert name in tx.__all__
    assert issubclass(GradientExplainer, Explainer)
    for cls in (AGCAM, GAE, GradCAMViT, GradCAM):
        assert issubclass(cls, GradientExplainer)


def test_custom_explainer_runs_through_explain(tiny_vit, tiny_images, registered):
    """The `Explainer` docstring recipe, end to end."""

    @register_method("test_token_norm", signed=False, class_specific=False, needs_grad=False,
                     default_upsample="nearest", default_norm="minmax", cost="1 forward, no grad",
                     summary="L2 norm of the final patch tokens")
    class TokenNorm(Explainer):
        def __init__(self, model: torch.nn.Module, p: float = 2.0) -> None:
            super().__init__(model)
            self.p = p

        def attribute(self, images: torch.Tensor, target: TargetSpec, target_space: str = "logit") -> Attribution:
            layout = self.layout(images)
            with torch.no_grad():
                tokens = self.model.forward_features(images)
                logits = self.model.forward_head(tokens)
            targets = target.resolve(logits)
            maps = tokens[:, layout.num_prefix_tokens:].norm(p=self.p, dim=-1)
            maps = maps.reshape(-1, 1, *layout.grid).expand(-1, targets.shape[1], -1, -1)
            return Attribution(maps.contiguous(), targets, logits)

    registered.append("test_token_norm")
    info = get_method("test_token_norm")
    assert isinstance(info, MethodInfo) and info.cls is TokenNorm and TokenNorm.info is info
    assert info in list_methods("test_*")
    model, x = tiny_vit(), tiny_images(2)
    exp = explain(model, x, method="test_token_norm", target="topk:2", p=1.0)
    tokens = model.forward_features(x)[:, 1:]
    assert exp.patch_maps.shape == (2, 2, 2, 2)
    torch.testing.assert_close(exp.patch_maps[:, 0].flatten(1), tokens.abs().sum(-1))
    with pytest.raises(TypeError, match="unknown options: q"):
        explain(model, x, method="test_token_norm", q=1)


class _GradNorm(GradientExplainer):
    """‖∂y/∂T‖ per patch token at blocks[-1].norm1: a minimal GradientExplainer."""

    def __init__(self, model: torch.nn.Module, multi_target: str = "vjp", internal_batch_size: int | None = 16,
                 query: str = "cls") -> None:
        super().__init__(model, multi_target, internal_batch_size, query)

    def _chunk(self, chunk: GradientChunk, layout: ViTLayout) -> ChunkMaps:
        with torch.enable_grad(), AttentionProbe(self.model, blocks=[-1], capture=("norm1",)) as probe:
            logits = chunk.forward(chunk.replicated())
        with torch.enable_grad():
            image_logits, targets, y = chunk.scores(logits)
            (g,) = chunk.grads(y, [probe.norm1[-1]])  # [n,K,N,D]
        maps = g[..., layout.num_prefix_tokens:, :].norm(dim=-1)
        return ChunkMaps(maps.detach(), targets, image_logits.detach())


@pytest.fixture
def grad_norm(registered: list[str]) -> type[_GradNorm]:
    """`_GradNorm`, registered for the test only (a method reads its `info`)."""
    registered.append("test_grad_norm")
    return register_method("test_grad_norm", signed=False, class_specific=True, needs_grad=True,
                           default_upsample="bilinear", default_norm="minmax", cost="1 fwd + 1 bwd, last block",
                           summary="gradient norm at the last norm1 tokens")(_GradNorm)


def test_gradient_explainer_chunks_and_multi_target_agree(tiny_vit, tiny_images, grad_norm):
    model, x = tiny_vit(depth=2), tiny_images(3)
    spec = TargetSpec("topk:2", 3, 3)
    ref = grad_norm(model, internal_batch_size=None).attribute(x, spec)
    assert ref.patch_maps.shape == (3, 2, 2, 2) and ref.head_maps is None and ref.extras == {}
    torch.testing.assert_close(ref.targets, model(x).topk(2, dim=-1).indices)
    assert ref.logits is not None and not ref.logits.requires_grad
    for options in ({"internal_batch_size": 1}, {"multi_target": "expand", "internal_batch_size": 3},
                    {"multi_target": "expand", "internal_batch_size": 1}):
        out = grad_norm(model, **options).attribute(x, spec)
        torch.testing.assert_close(out.patch_maps, ref.patch_maps)
        torch.testing.assert_close(out.targets, ref.targets)
        torch.testing.assert_close(out.logits, ref.logits)
    # Per image: the chunk's own gradient, nothing mixed across the batch.
    for b in range(3):
        one = grad_norm(model).attribute(x[b:b + 1], TargetSpec(ref.targets[b:b + 1], 1, 3))
        torch.testing.assert_close(one.patch_maps[0], ref.patch_maps[b])


def test_gradient_explainer_checks(tiny_vit, tiny_images, grad_norm):
    with pytest.raises(ValueError, match="multi_target"):
        grad_norm(tiny_vit(), multi_target="loop")
    with pytest.raises(ValueError, match="internal_batch_size"):
        grad_norm(tiny_vit(), internal_batch_size=0)
    with pytest.raises(ValueError, match="query"):
        grad_norm(tiny_vit(), query="row0")
    headless = tiny_vit(class_token=False, global_pool="avg")
    with pytest.raises(ValueError, match="no CLS token"), pytest.warns(UserWarning, match="pools"):
        grad_norm(headless).attribute(tiny_images(1), TargetSpec(0, 1, 3))
    assert not hasattr(GradCAM(tiny_vit()), "query")  # no query row for the CNN method
