"""Leaderboard rows for the native maps of interpretable models built on the scored backbone."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import Subset

from traitlens.evaluation import evaluate, leaderboard
from traitlens.models import SCOUTER
from traitlens.train import evaluate_accuracy


def test_native_model_rows_match_a_direct_evaluation(micro_setup) -> None:
    model, data = micro_setup
    torch.manual_seed(0)
    net = SCOUTER(copy.deepcopy(model), 2, hidden_dim=8, frozen_stages=0).eval()
    lb = leaderboard(model, data, ["rollout"], peers=[], n_images=4, steps=4, n_boot=50, progress=False,
                     columns=["trait_energy", "deletion"], native_models={"scouter": net})
    assert {r["method"] for r in lb.rows} == {"rollout", "scouter:native"}
    row = next(r for r in lb.rows if r["method"] == "scouter:native")
    assert row["source"] == "native" and row["model"] == "scouter"
    assert row["model_acc"] == pytest.approx(evaluate_accuracy(net, Subset(data, range(len(lb.results.indices)))))
    direct = evaluate(net, data, methods=["native"], metrics=["energy_pointing_game@trait", "deletion"],
                      max_images=4, metric_options=lb.knobs["metric_options"], n_boot=50, progress=False,
                      plots=False)
    assert row["trait_energy"] == pytest.approx(direct.value("native", "energy_pointing_game@trait"))
    assert row["deletion"] == pytest.approx(direct.value("native", "deletion"))
    rollout = next(r for r in lb.rows if r["method"] == "rollout")
    assert rollout["trait_energy"] != pytest.approx(row["trait_energy"])  # a different map, a different score
