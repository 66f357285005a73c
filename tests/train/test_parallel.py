"""fit_on_cores: two one-thread DDP processes train what one process trains."""

from __future__ import annotations

import json

import pytest
import torch

from traitlens.backbones import create_preset
from traitlens.data.traitshapes import TraitShapes, TraitShapesConfig, materialize
from traitlens.train import FitConfig, fit, fit_on_cores


@pytest.fixture(scope="module")
def micro_data():
    cfg = TraitShapesConfig(size=32, num_classes=4, seed=5)
    return (materialize(TraitShapes(cfg, "train", 64), num_workers=0, progress=False),
            materialize(TraitShapes(cfg, "val", 16), num_workers=0, progress=False))


def _model():
    torch.manual_seed(0)
    return create_preset("traitlens-vit-micro", 4)


def test_two_processes_train_the_weights_one_process_trains(micro_data, tmp_path):
    train, val = micro_data
    recipe = FitConfig(epochs=2, batch_size=16, lr=1e-3, amp=False, seed=3)  # fp32: bf16 rounding differs by batch
    single, parallel = _model(), _model()
    ref = fit(single, train, val, recipe, out=tmp_path / "one", progress=False)
    res = fit_on_cores(parallel, train, val, recipe, out=tmp_path / "two", processes=2, progress=False)
    for (name, a), b in zip(single.state_dict().items(), parallel.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4, msg=name)
    assert [h["val_acc"] for h in res.history] == [h["val_acc"] for h in ref.history]
    assert res.best_dir == tmp_path / "two" / "best" and (res.best_dir / "config.json").is_file()
    assert len(json.loads((tmp_path / "two" / "metrics.json").read_text())) == 2


def test_a_failing_worker_is_one_error(micro_data):
    train, val = micro_data
    with pytest.raises(RuntimeError, match=r"training worker failed: rank [01]: ValueError: unknown selection 'best'"):
        fit_on_cores(_model(), train, val, FitConfig(epochs=1, selection="best"), processes=2, progress=False)


def test_one_process_is_plain_fit(micro_data):
    train, val = micro_data
    recipe = FitConfig(epochs=1, batch_size=16, amp=False)
    a, b = _model(), _model()
    fit(a, train, val, recipe, progress=False)
    fit_on_cores(b, train, val, recipe, processes=1, progress=False)
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y)
