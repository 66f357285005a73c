"""The `evaluate` cache: maps stored with `Explanation.save` give the same results as a fresh run, and an
unreadable cache file is recomputed (with a warning) instead of costing the method."""

from __future__ import annotations

import importlib
import logging
import math
import shutil

import torch

from traitlens.evaluation import evaluate
from traitlens.evaluation.cache import BatchCache, EvalCache, options_hash
from traitlens.explain import Explanation

METHODS = ["cdam", "integrated_gradients"]  # IG: pixel maps and tensor extras
METRICS = ["deletion", "insertion", "pointing_game", "gini", "energy_pointing_game@trait"]
KW = dict(metric_options={"deletion": {"steps": 4}, "insertion": {"steps": 4}},
          method_options={"integrated_gradients": {"n_steps": 4}}, batch_size=4, progress=False, n_boot=50,
          plots=False)


def assert_same_results(a, b):
    assert a.rows == b.rows or all(_same_row(x, y) for x, y in zip(a.rows, b.rows, strict=True))
    assert list(a.results) == list(b.results)
    for key, r in a.results.items():
        s = b.results[key]
        assert torch.equal(r.values.nan_to_num(-7), s.values.nan_to_num(-7)), key
        assert r.knobs == s.knobs, key
        assert (r.curves is None) == (s.curves is None) and (r.curves is None or torch.equal(r.curves, s.curves))
        assert list(r.extras) == list(s.extras) and all(torch.equal(v, s.extras[k]) for k, v in r.extras.items())
    assert torch.equal(a.indices, b.indices)
    assert (a.timing, a.skipped, a.config) == (b.timing, b.skipped, b.config)


def _same_row(x, y):
    return x.keys() == y.keys() and all(x[k] == y[k] or (isinstance(x[k], float) and math.isnan(x[k])
                                                          and math.isnan(y[k])) for k in x)


def test_cached_maps_give_the_fresh_results(micro_setup, tmp_path, monkeypatch):
    model, data = micro_setup
    fresh = evaluate(model, data, METHODS, METRICS, out=tmp_path, **KW)
    assert not fresh.skipped
    # every explanation file round-trips every field, including extras such as "normalize" that knobs record
    files = sorted((tmp_path / "cache").rglob("*.safetensors"))
    assert len(files) == 4
    cached = Explanation.load(files[0])
    assert cached.extras["normalize"] and "seconds" in Explanation.read_meta(files[0])
    for folder in (tmp_path / "cache").rglob("metrics"):  # metrics recomputed from the cached maps
        shutil.rmtree(folder)

    def no_explain(*args, **kwargs):
        raise AssertionError("a cache hit must not explain again")

    # the package re-exports the function `evaluate`, which shadows the module of the same name
    monkeypatch.setattr(importlib.import_module("traitlens.evaluation.evaluate"), "explain", no_explain)
    again = evaluate(model, data, METHODS, METRICS, out=tmp_path, **KW)
    assert_same_results(fresh, again)
    # a full hit (maps and metric results) too
    assert_same_results(fresh, evaluate(model, data, METHODS, METRICS, out=tmp_path, **KW))


def test_an_unreadable_cache_file_is_a_miss(micro_setup, tmp_path, caplog):
    model, data = micro_setup
    fresh = evaluate(model, data, ["cdam"], ["gini", "pointing_game"], out=tmp_path, **KW)
    maps = sorted((tmp_path / "cache").rglob("*.safetensors"))
    results = sorted((tmp_path / "cache").rglob("*.pt"))
    maps[0].write_bytes(b"not a safetensors file")
    results[-1].write_bytes(b"not a torch file")
    with caplog.at_level(logging.WARNING, logger="traitlens.evaluation.cache"):
        again = evaluate(model, data, ["cdam"], ["gini", "pointing_game"], out=tmp_path, **{**KW, "n_boot": 0})
    assert not again.skipped
    assert "cannot read cached maps" in caplog.text and "cannot read cached metric results" in caplog.text
    for key, r in fresh.results.items():
        assert torch.equal(again.results[key].values.nan_to_num(-7), r.values.nan_to_num(-7)), key
    Explanation.load(maps[0])  # rewritten


def test_cache_paths(tmp_path):
    slot = EvalCache(tmp_path, "abc", resume=True).batch("peer:x", {"a": 1}, [4, 5, 6], "k")
    assert slot.explanation_path == tmp_path / "cache" / "abc" / f"peer_x-{options_hash({'a': 1})}" / \
        "0000004-0000007-k.safetensors"
    assert slot.results_path("iou@trait", {}).parent.name == f"iou@trait-{options_hash({})}"
    none = BatchCache(None, "s", resume=True)
    assert none.explanation_path is None and none.load_explanation(torch.device("cpu")) is None
    assert EvalCache(tmp_path, "abc", resume=False).batch("m", {}, [0], "k").load_results("gini", {}) is None
