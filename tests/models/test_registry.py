"""The model-kind registry: one decorator makes a new interpretable model buildable, loadable and trainable."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn as nn

from traitlens.backbones import builders, load_model, save_model
from traitlens.models import (
    KINDS,
    InterpretableModel,
    ModelOutput,
    build_interpretable,
    get_model_kind,
    list_model_kinds,
    recommended_fit_config,
    register_model_kind,
    registry,
)
from traitlens.train import FitConfig

RECIPES = {"quick": FitConfig(epochs=1, mode="model", lr=0.5), "reference": FitConfig(epochs=7, mode="model")}


@pytest.fixture
def clean_registry() -> Iterator[None]:
    kinds, built = dict(registry._KINDS), dict(builders._BUILDERS)
    yield
    registry._KINDS.clear()
    registry._KINDS.update(kinds)
    builders._BUILDERS.clear()
    builders._BUILDERS.update(built)


def _define_kind() -> type[InterpretableModel]:
    @register_model_kind("linear_maps", recipes=RECIPES, quick_options={"scale": 2.0}, notes=("hand-made",))
    class LinearMaps(InterpretableModel):
        """Logits = scale · mean colour per class channel; the map of class c is channel c of the image."""

        def __init__(self, backbone: str, num_classes: int, class_names=None, scale: float = 1.0) -> None:
            super().__init__()
            self.backbone = nn.Identity()
            self.num_classes = num_classes
            self.scale = nn.Parameter(torch.tensor(float(scale)))
            self._init_common(None, {"scale": scale}, class_names)

        def forward_output(self, images: torch.Tensor, return_maps: bool | None = None) -> ModelOutput:
            maps = images[:, : self.num_classes] * self.scale
            want = (not self.training) if return_maps is None else return_maps
            return ModelOutput(maps.mean((-2, -1)), maps if want else None)

    return LinearMaps


def test_a_registered_kind_builds_loads_and_has_recipes(clean_registry: None, tmp_path) -> None:
    cls = _define_kind()
    assert cls.kind == "linear_maps" and KINDS["linear_maps"] is cls
    assert "linear_maps" in [k.name for k in list_model_kinds()] and [k.name for k in list_model_kinds("lin*")] == [
        "linear_maps"]
    net = build_interpretable("linear_maps", "none", 3, class_names=["a", "b", "c"],
                              **get_model_kind("linear_maps").quick_options).eval()
    x = torch.rand(2, 3, 4, 4)
    assert torch.allclose(net(x), 2.0 * x.mean((-2, -1)))  # forward returns logits
    assert torch.allclose(net.forward_maps(x).maps, 2.0 * x)
    save_model(net, tmp_path / "m")
    back = load_model(tmp_path / "m")
    assert type(back) is cls and back.class_names == ["a", "b", "c"] and torch.equal(back(x), net(x))
    assert recommended_fit_config("linear_maps").lr == 0.5
    assert recommended_fit_config("linear_maps", "reference", epochs=3).epochs == 3
    assert get_model_kind("linear_maps").notes == ("hand-made",)


def test_the_registry_refuses_clashes_and_incomplete_kinds(clean_registry: None) -> None:
    _define_kind()
    with pytest.raises(ValueError, match="already registered"):
        _define_kind()
    with pytest.raises(ValueError, match="lacks the recipes"):
        register_model_kind("half", recipes={"quick": RECIPES["quick"]})
    with pytest.raises(ValueError, match="unknown interpretable model 'nope'; choose from"):
        get_model_kind("nope")
    with pytest.raises(ValueError, match="unknown recipe"):
        recommended_fit_config("linear_maps", "fast")


def test_the_three_kinds_are_registered() -> None:
    assert {"promptcam", "intr", "scouter"} <= {k.name for k in list_model_kinds()}
    for kind in list_model_kinds():
        assert set(kind.recipes) == set(registry.RECIPES) and kind.cls.kind == kind.name
