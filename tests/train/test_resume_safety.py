"""Resuming is safe: no code runs from a checkpoint, a resume checks what it resumes, and no epoch or temp file is
lost or left behind by a kill between writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from traitlens.train import CheckpointError, FitConfig, fit, load_checkpoint
from traitlens.train import trainer as trainer_module

from .test_trainer import ArraySet, _model

CFG = FitConfig(epochs=2, batch_size=16, lr=1e-3, seed=3)


class _Planted:
    """Unpickling this object touches a marker file: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _crash_after_first_epoch(tmp: Path, data: ArraySet, cfg: FitConfig = CFG) -> None:
    def crash(epoch: int, _metrics: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(_model(), data, data, cfg, out=tmp, progress=False, on_epoch_end=crash)


def test_a_planted_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": _Planted(marker)}, run / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="cannot be resumed safely"):
        fit(_model(), ArraySet(), None, CFG, out=run, resume=True, progress=False)
    with pytest.raises(CheckpointError):
        load_checkpoint(run / "checkpoint.pt")
    assert not marker.exists()


def test_a_checkpoint_holds_only_tensors_and_plain_containers(tmp_path: Path) -> None:
    _crash_after_first_epoch(tmp_path, ArraySet())
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # would raise on any pickled object
    assert state["epoch"] == 0 and state["config"]["lr"] == CFG.lr


@pytest.mark.parametrize(("change", "named"), [
    ({"seed": 4}, "seed 3 -> 4"),
    ({"lr": 5e-4}, "lr 0.001 -> 0.0005"),
    ({"epochs": 3}, "epochs 2 -> 3"),
    ({"batch_size": 8}, "batch_size 16 -> 8"),
    ({"data": 1}, "train data differs"),
])
def test_resume_refuses_other_settings_or_data(tmp_path: Path, change: dict, named: str) -> None:
    _crash_after_first_epoch(tmp_path, ArraySet())
    data = ArraySet(seed=change.pop("data", 0))
    cfg = FitConfig(**{**CFG.__dict__, **change})
    with pytest.raises(CheckpointError, match=named.replace("(", r"\(")):
        fit(_model(), data, data, cfg, out=tmp_path, resume=True, progress=False)


def test_resume_accepts_a_different_worker_count(tmp_path: Path) -> None:
    _crash_after_first_epoch(tmp_path, ArraySet())
    result = fit(_model(), ArraySet(), ArraySet(), FitConfig(**{**CFG.__dict__, "num_workers": 1}), out=tmp_path,
                 resume=True, progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2]


def test_a_kill_between_the_history_and_the_checkpoint_loses_no_epoch(tmp_path: Path, monkeypatch) -> None:
    data = ArraySet()
    straight = fit(_model(), data, data, CFG, out=tmp_path / "a", progress=False)
    real_save = trainer_module.save_checkpoint

    def killed_on_second_save(path, state):
        if state["epoch"] == 1:
            raise KeyboardInterrupt  # metrics.json already holds epoch 2; the checkpoint still says epoch 1
        return real_save(path, state)

    monkeypatch.setattr(trainer_module, "save_checkpoint", killed_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        fit(_model(), data, data, CFG, out=tmp_path / "b", progress=False)
    assert [h["epoch"] for h in json.loads((tmp_path / "b" / "metrics.json").read_text())] == [1, 2]
    monkeypatch.setattr(trainer_module, "save_checkpoint", real_save)
    resumed = fit(_model(seed=9), data, data, CFG, out=tmp_path / "b", resume=True, progress=False)
    rows = json.loads((tmp_path / "b" / "metrics.json").read_text())
    drop = "images_per_s"  # wall-clock throughput differs between runs
    assert [{k: v for k, v in r.items() if k != drop} for r in rows] == [
        {k: v for k, v in r.items() if k != drop} for r in straight.history]
    assert len(resumed.history) == 2


def test_temp_files_of_killed_writes_are_swept(tmp_path: Path) -> None:
    _crash_after_first_epoch(tmp_path, ArraySet())
    stale = [tmp_path / ".checkpoint.pt.k3j4h5.tmp", tmp_path / "best" / ".model.safetensors.a1b2c3.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 1024)
    keep = tmp_path / "notes.tmp"  # not a name atomic_write makes
    keep.write_text("mine")
    fit(_model(), ArraySet(), ArraySet(), CFG, out=tmp_path, resume=True, progress=False)
    assert not any(p.exists() for p in stale) and keep.exists()


def test_a_resume_keeps_the_wrapped_metrics_file(tmp_path: Path) -> None:
    """`traitlens train` wraps metrics.json as {"epochs", "data", "test"}: a resumed `fit` rewrites it with its
    data record kept (not as a bare list) and the earlier run's test score dropped."""
    data = ArraySet()
    _crash_after_first_epoch(tmp_path, data)
    epochs = json.loads((tmp_path / "metrics.json").read_text())
    assert [row["epoch"] for row in epochs] == [1]  # plain `fit`: the list
    wrapped = {"epochs": epochs, "data": {"train": "mine"}, "test": {"acc": 0.5}}
    (tmp_path / "metrics.json").write_text(json.dumps(wrapped))
    seen: list[object] = []
    fit(_model(), data, data, CFG, out=tmp_path, resume=True, progress=False,
        on_epoch_end=lambda _e, _m: seen.append(json.loads((tmp_path / "metrics.json").read_text())))
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["data"] == {"train": "mine"} and "test" not in doc
    assert [row["epoch"] for row in doc["epochs"]] == [1, 2] and seen == [doc]
