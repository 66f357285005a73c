"""Cross-checks against Quantus (an optional, LGPL test oracle: never imported by the library)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from traitlens.metrics import complexity, energy_pointing_game, gini, pointing_game

quantus = pytest.importorskip("quantus")


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    x = rng.random((4, 1, 7, 6)).astype(np.float32)
    a = rng.random((4, 1, 7, 6)).astype(np.float32)
    a[1, 0, 3, 3] = 5.0  # a clear maximum inside the mask
    s = np.zeros((4, 1, 7, 6), dtype=bool)
    s[:, :, 1:4, 2:5] = True
    return x, np.array([0, 1, 0, 2]), a, s


def _run(metric, x, y, a, s=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(metric(model=None, x_batch=x, y_batch=y, a_batch=a, s_batch=s, device="cpu"), dtype=float)


def test_gini_and_entropy_match_quantus(batch):
    x, y, a, _ = batch
    maps = torch.from_numpy(a[:, 0]).double()
    assert np.allclose(gini(maps).values[:, 0].numpy(), _run(quantus.Sparseness(disable_warnings=True), x, y, a))
    assert np.allclose(complexity(maps).values[:, 0].numpy(), _run(quantus.Complexity(disable_warnings=True), x, y, a),
                       atol=1e-5)


def test_energy_and_pointing_match_quantus(batch):
    x, y, a, s = batch
    maps, mask = torch.from_numpy(a[:, 0]).double(), torch.from_numpy(s[:, 0])
    rma = _run(quantus.RelevanceMassAccuracy(disable_warnings=True), x, y, a, s)
    assert np.allclose(energy_pointing_game(maps, mask, sign="positive").values[:, 0].numpy(), rma, atol=1e-6)
    pg = _run(quantus.PointingGame(disable_warnings=True), x, y, a, s)
    assert np.array_equal(pointing_game(maps, mask, tol=0, ties="any").values[:, 0].numpy(), pg)
