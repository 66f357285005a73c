"""The pieces `evaluate` is built from: request parsing, padding, sharding, result order and derived metrics."""

from __future__ import annotations

import math

import pytest
import torch

from traitlens.evaluation.distributed import rank_and_world, shard
from traitlens.evaluation.padding import concat_results, mark_padding, n_padded
from traitlens.evaluation.requests import parse_requests
from traitlens.evaluation.results import derive_metrics, sort_results, summary_row
from traitlens.metrics import MetricResult


def test_requests_merge_outputs_sources_and_knobs():
    reqs = parse_requests(["deletion", "pointing_game@trait", "pointing_game@trait"],
                          {"deletion": {"steps": 4}, "pointing_game": {"tol": 2}, "pointing_game@trait": {"tol": 0}})
    assert [r.key for r in reqs] == ["deletion", "pointing_game@trait"]
    assert reqs[0].knobs == {"steps": 4} and reqs[1].knobs == {"tol": 0}
    assert reqs[1].labels == [o + "@trait" for o in reqs[1].outputs]
    with pytest.raises(ValueError, match="unknown mask source"):
        parse_requests(["gini@sky"], {})


def test_padding_marks_slots_and_concat_widens():
    pad = torch.tensor([[False, True]])
    r = mark_padding(MetricResult("x", torch.tensor([[1.0, 2.0]]), "higher"), pad)
    assert math.isnan(r.values[0, 1]) and n_padded(r) == 1
    wide = concat_results([r, MetricResult("x", torch.tensor([[3.0]]), "higher")])
    assert wide.values.shape == (2, 2) and n_padded(wide) == 2 and wide.value == 2.0
    row = summary_row("m", "x", wide, 0, 0)
    assert row["n_nan"] == 0 and math.isnan(row["ci_low"])  # padded slots are not undefined samples


def test_shards_cover_the_images_in_rank_order():
    spans = [shard(10, r, 3) for r in range(3)]
    assert spans == [(0, 3), (3, 6), (6, 10)]
    assert rank_and_world() == (0, 1)


def test_derived_metric_and_order():
    d = MetricResult("deletion", torch.tensor([[0.2], [0.4]]), "lower")
    i = MetricResult("insertion", torch.tensor([[0.5], [0.9]]), "higher")
    merged = {("b", "insertion"): i, ("a", "deletion"): d, ("a", "insertion"): i, ("b", "deletion"): d}
    derive_metrics(merged)
    assert torch.allclose(merged[("a", "insertion_minus_deletion")].values, torch.tensor([[0.3], [0.5]]).double())
    ordered = sort_results(merged, ["a", "b"], ["deletion", "insertion"])
    assert list(ordered)[:3] == [("a", "deletion"), ("a", "insertion"), ("a", "insertion_minus_deletion")]
