"""`evaluate`: files, mask sources, the trait-mask oracle, resumable cache, skips and bootstrap CIs."""

from __future__ import annotations

import importlib
import json
import math

import pytest
import torch

from traitlens.backbones import unnormalize
from traitlens.evaluation import bootstrap_ci, evaluate
from traitlens.evaluation._data import load_batch, trait_info
from traitlens.explain import Explanation
from traitlens.metrics import MetricResult

# the package re-exports the function `evaluate`, which shadows the module of the same name
ev_mod = importlib.import_module("traitlens.evaluation.evaluate")


def oracle_explainer(model, data, which: str = "disc"):
    """Maps read from the ground truth: 'disc' = the sibling-discriminative mask, 'outside' = object minus it."""
    traits = trait_info(data)
    batch = load_batch(data, list(range(len(data))), traits)
    table = {bytes((batch.images01[i] * 255).round().byte().numpy()): i for i in range(len(data))}

    def run(m, x, target):
        rows = [table[bytes((img * 255).round().byte().numpy())] for img in unnormalize(m, x).cpu()]
        disc = batch.disc_masks[rows, 0].float()
        maps = disc if which == "disc" else batch.masks[rows].float() * (1 - disc)
        maps = maps[:, None]
        patch = torch.nn.functional.adaptive_avg_pool2d(maps, (4, 4))
        tgt = torch.as_tensor(target).view(-1, 1) if target is not None else torch.zeros(len(rows), 1).long()
        return Explanation(maps=maps, patch_maps=patch, targets=tgt, method=f"oracle:{which}",
                           extras={"raw_pixel_maps": maps})

    return run


def test_hand_map_covering_the_discriminative_mask_scores_one(micro_setup):
    model, data = micro_setup
    assert trait_info(data).max_siblings == 1  # two sibling classes: one mask per image
    metrics = ["pointing_game@trait", "energy_pointing_game@trait", "iou@trait", "energy_pointing_game@object"]
    opts = {"pointing_game@trait": {"tol": 0}, "mask_overlap@trait": {"tau": "area"}}
    good = evaluate(model, data, ["oracle"], metrics, explainers={"oracle": oracle_explainer(model, data)},
                    metric_options=opts, progress=False, n_boot=0)
    assert good.value("oracle", "pointing_game@trait") == 1.0
    assert good.value("oracle", "energy_pointing_game@trait") == pytest.approx(1.0)
    assert good.value("oracle", "iou@trait") == pytest.approx(1.0)
    assert good.value("oracle", "energy_pointing_game@object") == pytest.approx(1.0)  # the trait is on the critter
    bad = evaluate(model, data, ["oracle"], metrics, explainers={"oracle": oracle_explainer(model, data, "outside")},
                   metric_options=opts, progress=False, n_boot=0)
    assert bad.value("oracle", "pointing_game@trait") == 0.0
    assert bad.value("oracle", "energy_pointing_game@trait") == pytest.approx(0.0)
    assert bad.value("oracle", "energy_pointing_game@object") == pytest.approx(1.0)  # on the object, off the trait


def test_files_derived_metric_and_resume(micro_setup, tmp_path, monkeypatch):
    model, data = micro_setup
    kw = dict(metrics=["deletion", "insertion", "pointing_game", "gini", "trait_precision"], out=tmp_path,
              batch_size=4, metric_options={"deletion": {"steps": 4}, "insertion": {"steps": 4}}, progress=False,
              n_boot=100)
    res = evaluate(model, data, ["cdam", "rollout"], **kw)
    for name in ("results.csv", "results.json", "results.md", "per_image.csv", "plots/curves.png",
                 "plots/metrics.png"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "plots/curves.png").read_bytes()[:4] == b"\x89PNG"
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["knobs"]["cdam/deletion"]["n_steps"] == 4 and doc["config"]["target"] == "label"
    labels = {r["metric"] for r in res.rows}
    assert {"insertion_minus_deletion", "trait_ebpg", "contrast_ebpg", "class_ebpg"} <= labels
    d, i = res.results[("cdam", "deletion")], res.results[("cdam", "insertion")]
    assert torch.allclose(res.results[("cdam", "insertion_minus_deletion")].values, i.values - d.values)
    assert res.row("cdam", "deletion")["ci_low"] <= res.value("cdam", "deletion") <= res.row("cdam", "deletion")[
        "ci_high"]
    assert "| cdam |" in (tmp_path / "results.md").read_text()
    assert len((tmp_path / "per_image.csv").read_text().splitlines()) > len(data) * 2
    # an interrupted run: drop one cached batch; the rerun recomputes only it (explain would fail otherwise)
    cached = sorted((tmp_path / "cache").rglob("*.safetensors"))
    assert len(cached) == 4  # 2 methods × 2 batches
    cached[0].unlink()
    calls = []
    real = ev_mod.explain

    def counting(*args, **kwargs):
        calls.append(kwargs.get("method"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ev_mod, "explain", counting)
    again = evaluate(model, data, ["cdam", "rollout"], **{**kw, "n_boot": 0}, plots=False)
    assert len(calls) == 1
    for key, r in res.results.items():
        assert torch.allclose(again.results[key].values, r.values, equal_nan=True), key


def test_skips_metrics_whose_inputs_are_missing(micro_setup):
    model, data = micro_setup

    class NoTraits(torch.utils.data.Dataset):  # plain dict items, no TraitShapes config, no masks
        def __len__(self):
            return 3

        def __getitem__(self, i):
            item = data[i]
            return {"image": item["image"], "label": item["label"]}

    res = evaluate(model, NoTraits(), ["rollout"], ["gini", "pointing_game", "trait_precision", "wsol"],
                   progress=False, n_boot=0)
    assert ("rollout", "gini") in res.results
    assert "neither masks nor boxes" in res.skipped["rollout/pointing_game"]
    assert "TraitShapes" in res.skipped["rollout/trait_precision"]
    assert "no boxes" in res.skipped["rollout/wsol"]


def test_bad_requests_fail_early(micro_setup):
    model, data = micro_setup
    with pytest.raises(ValueError, match="takes no masks"):
        evaluate(model, data, ["cdam"], ["deletion@trait"], progress=False)
    with pytest.raises(ValueError, match="unknown mask source"):
        evaluate(model, data, ["cdam"], ["pointing_game@nowhere"], progress=False)
    with pytest.raises(ValueError, match="unknown method"):
        evaluate(model, data, ["nope"], ["gini"], progress=False)
    with pytest.raises(ValueError, match="target must be"):
        evaluate(model, data, ["cdam"], ["gini"], target="second", progress=False)
    seen = []

    def recorder(m, x, target):
        seen.append(target)
        from traitlens.explain import explain

        return explain(m, x, method="rollout", target=target)

    for rule in ("top1", "label"):
        evaluate(model, data, ["rec"], ["gini"], explainers={"rec": recorder}, target=rule, progress=False,
                 n_boot=0, max_images=2)
    assert seen[0] is None  # top-1: the explainer resolves the prediction itself
    assert seen[1].tolist() == [int(data[0]["label"]), int(data[1]["label"])]


def test_bootstrap_ci_mean_and_dataset_level():
    v = torch.arange(20, dtype=torch.float64).view(20, 1)
    r = MetricResult("x", v, "higher")
    lo, hi = bootstrap_ci(r, 2000, seed=1)
    assert lo < 9.5 < hi and lo > 5 and hi < 14
    assert all(math.isnan(c) for c in bootstrap_ci(r.select([0]), 100))
    pg = MetricResult("pg", torch.tensor([[1.0], [0.0], [1.0], [1.0]]), "higher",
                      extras={"classes": torch.tensor([[0], [1], [0], [1]])}, aggregate="macro_classes")
    lo, hi = bootstrap_ci(pg, 100)
    assert 0 <= lo <= pg.value <= hi <= 1


def test_a_method_failing_midway_is_dropped_not_misaligned(micro_setup):
    model, data = micro_setup
    calls = []

    def flaky(m, x, target):
        calls.append(x.shape[0])
        if len(calls) == 2:
            raise RuntimeError("boom")
        from traitlens.explain import explain

        return explain(m, x, method="rollout", target=target)

    res = evaluate(model, data, ["flaky", "rollout"], ["gini"], explainers={"flaky": flaky}, batch_size=2,
                   progress=False, n_boot=0)
    assert ("flaky", "gini") not in res.results and "boom" in res.skipped["flaky"]
    assert len(calls) == 2  # not retried on later batches
    assert res.results[("rollout", "gini")].values.shape[0] == len(data)


def test_cache_is_keyed_by_data_content(micro_setup, tmp_path):
    model, data = micro_setup
    first = evaluate(model, data, ["rollout"], ["gini"], out=tmp_path, progress=False, n_boot=0, plots=False)

    class Flipped(torch.utils.data.Dataset):  # same length and indices, different pixels
        config = data.config

        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            item = dict(data[i])
            item["image"] = item["image"].flip(-1)
            return item

    second = evaluate(model, Flipped(), ["rollout"], ["gini"], out=tmp_path, progress=False, n_boot=0, plots=False)
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 2
    assert not torch.equal(first.results[("rollout", "gini")].values, second.results[("rollout", "gini")].values)
