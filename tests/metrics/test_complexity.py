"""Sparsity / complexity (metrics.md §4): the §8 oracles, ranges and invariances."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from traitlens.explain import upsample_maps
from traitlens.metrics import complexity, effective_complexity, gini, near_zero_fraction


def test_gini_oracles():
    assert gini(torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])).value == pytest.approx(0.75)  # one-hot, D = 4
    assert gini(torch.ones(1, 2, 2)).value == pytest.approx(0.0)
    assert math.isnan(gini(torch.zeros(1, 2, 2)).value)


def test_entropy_oracles():
    assert complexity(torch.ones(1, 3, 3)).value == pytest.approx(math.log(9))
    one_hot = torch.zeros(1, 3, 3)
    one_hot[0, 1, 1] = -2.0
    assert complexity(one_hot).value == pytest.approx(0.0)
    assert effective_complexity(one_hot).value == 1


def test_near_zero_fraction_oracle_and_flag():
    s = torch.tensor([[[10.0, 0.4, -0.4, 0.6, 5.0]]])
    assert near_zero_fraction(s, level="pixel").value == pytest.approx(0.4)
    neg = near_zero_fraction(torch.tensor([[[-1.0, -2.0]]]), level="pixel")
    assert neg.value == 0.0 and neg.flagged.all()  # max s ≤ 0: nothing qualifies, the map is flagged
    assert near_zero_fraction(torch.tensor([[[-10.0, -0.1]]]), level="pixel", ref="maxabs").value == 0.5


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-10, 10, allow_nan=False), min_size=4, max_size=4))
def test_gini_range_and_nearest_upsampling_invariance(vals):
    s = torch.tensor(vals, dtype=torch.float64).view(1, 1, 2, 2)
    g = gini(s, level="pixel").values
    if torch.isnan(g).all():
        assert torch.all(s == 0)
        return
    assert -1e-12 <= float(g) <= 0.75 + 1e-12
    up = upsample_maps(s, (8, 8), "nearest")
    assert float(gini(up, level="pixel").values) == pytest.approx(float(g), abs=1e-9)
    h = complexity(s, level="pixel").values
    assert -1e-12 <= float(h) <= math.log(4) + 1e-12
