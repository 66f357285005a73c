"""The metric registry: metadata, lookup by output, and every registered metric running on a tiny ViT."""

from __future__ import annotations

import pickle

import pytest
import torch

from traitlens.explain import explain
from traitlens.metrics import MetricInputs, MetricResult, get_metric, list_metrics, resolve_metrics
from traitlens.metrics._registry import CATEGORIES, DIRECTIONS, NEEDS


def test_every_metric_declares_metadata():
    infos = list_metrics()
    assert len(infos) >= 20
    for info in infos:
        assert info.category in CATEGORIES
        assert set(info.outputs.values()) <= set(DIRECTIONS)
        assert info.needs <= NEEDS
        assert info.cost and info.summary and info.spec.startswith("metrics.md")
    # the directions the spec fixes (metrics.md §7)
    dirs = {o: d for i in infos for o, d in i.outputs.items()}
    assert dirs["deletion"] == "lower" and dirs["insertion"] == "higher"
    assert dirs["aopc_morf"] == "higher" and dirs["aopc_lerf"] == "lower"  # not Quantus's tag
    assert dirs["road_morf"] == "lower" and dirs["road_lerf"] == "higher"
    assert dirs["complexity"] == "lower" and dirs["gini"] == "higher" and dirs["area_size"] == "none"
    assert dirs["mprt"] == "lower" and dirs["class_sensitivity"] == "lower"


def test_lookup_by_output_and_resolve():
    assert get_metric("road_morf").name == "road"
    assert get_metric("iou").name == "mask_overlap"
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        get_metric("nope")
    plan = resolve_metrics(["iou", "deletion", "dice", "road"])
    assert plan == {"mask_overlap": ["iou", "dice"], "deletion": ["deletion"],
                    "road": ["road_morf", "road_lerf", "road_combined"]}
    assert [i.name for i in list_metrics("road_*")] == ["road"]


def test_metric_result_concat_select_and_pickle():
    r = MetricResult("x", torch.tensor([[1.0], [float("nan")], [3.0]]), "higher", {"a": 1},
                     extras={"e": torch.arange(3).view(3, 1)})
    assert r.value == 2.0 and r.n == 2 and r.n_nan == 1
    again = MetricResult.concat([r.select([0]), r.select([1, 2])])
    assert torch.equal(again.extras["e"], r.extras["e"]) and again.value == r.value
    assert pickle.loads(pickle.dumps(r)).value == 2.0
    assert r.summary()["knobs"] == {"a": 1}


CHEAP = {
    "deletion": {"steps": 4}, "insertion": {"steps": 4}, "road": {"percentages": (30, 60)},
    "infidelity": {"n_samples": 3}, "sensitivity_max": {"n_samples": 2}, "wsol": {"cam_curve_interval": 0.1},
}


@pytest.mark.parametrize("info", list_metrics(), ids=lambda i: i.name)
def test_every_metric_runs_on_a_tiny_vit(info, tiny_vit, tiny_images):
    model = tiny_vit(depth=2, num_classes=4)
    x = tiny_images(2)
    exp = explain(model, x, method="cdam")
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, 2:6, 1:5] = True
    disc = torch.zeros(2, 2, 8, 8, dtype=torch.bool)
    disc[:, 0, :4, :4] = True
    inputs = MetricInputs(
        model=model, images=x, exp=exp, labels=torch.tensor([0, 1]), masks=masks,
        boxes=[torch.tensor([[1.0, 2.0, 5.0, 6.0]])] * 2, indices=torch.tensor([4, 5]),
        explainer=lambda m, imgs, t: explain(m, imgs, method="cdam", target=t),
        siblings=torch.tensor([[1, -1], [0, 2]]), disc_masks=disc, class_masks=masks,
    )
    out = info.compute(inputs, **CHEAP.get(info.name, {}))
    assert set(out) <= set(info.outputs) and out
    for name, res in out.items():
        assert res.name == name and res.direction == info.outputs[name]
        assert res.values.shape[0] == 2 and res.values.dtype == torch.float64
        assert isinstance(res.value, float)
        assert res.knobs.get("spec", "").startswith("metrics.md")
    with pytest.raises(TypeError, match="has no option"):
        info.compute(inputs, definitely_not_a_knob=1)
