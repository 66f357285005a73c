"""Trainer: exact resume, atomic checkpoints, linear probing, saved best model."""

from __future__ import annotations

import pytest
import torch

from traitlens.backbones import create_preset, load_model
from traitlens.train import FitConfig, fit, load_checkpoint
from traitlens.train import trainer as trainer_module


class ArraySet(torch.utils.data.Dataset):
    """In-memory images/labels (the trainer's fast path) with a learnable signal in channel 0."""

    def __init__(self, n: int = 48, num_classes: int = 3, size: int = 32, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, num_classes, (n,), generator=g)
        images = torch.rand(n, 3, size, size, generator=g) * 0.5
        images[:, 0] += self.labels.view(-1, 1, 1).float() / num_classes
        self.images = images
        self.classes = [f"c{i}" for i in range(num_classes)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": int(self.labels[i])}


class DictOnlySet(ArraySet):
    """The same data without the fast path: items are collated by a DataLoader."""

    def __init__(self, *a, **k) -> None:
        super().__init__(*a, **k)
        self._images, self._labels = self.images, self.labels
        del self.images

    def __getitem__(self, i: int) -> dict:
        return {"image": self._images[i], "label": int(self._labels[i])}


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    # dropout makes the RNG state matter for exact resumption
    model = create_preset("traitlens-vit-micro", 3)
    model.pos_drop.p = 0.1
    return model


CFG = FitConfig(epochs=3, batch_size=16, lr=1e-3, seed=3)


def test_resume_continues_exactly(tmp_path) -> None:
    data = ArraySet()
    straight = _model()
    fit(straight, data, data, CFG, out=tmp_path / "a", progress=False)

    crashed = _model()

    def crash(epoch: int, _metrics: dict) -> None:
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(crashed, data, data, CFG, out=tmp_path / "b", progress=False, on_epoch_end=crash)
    resumed = _model(seed=123)  # different init: everything must come from the checkpoint
    result = fit(resumed, data, data, CFG, out=tmp_path / "b", resume=True, progress=False)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert (tmp_path / "b" / "metrics.csv").read_text().count("\n") == 4


def test_dataloader_path_equals_fast_path() -> None:
    a, b = _model(), _model()
    a.pos_drop.p = b.pos_drop.p = 0.0  # a DataLoader draws its base seed from the global RNG
    fit(a, ArraySet(), None, CFG, progress=False)
    fit(b, DictOnlySet(), None, CFG, progress=False)
    assert torch.allclose(a.head.weight, b.head.weight, atol=1e-6)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch) -> None:
    data = ArraySet()
    real_save = torch.save
    calls = {"n": 0}

    def flaky_save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second epoch's checkpoint dies half-way through the write
            with open(f, "wb") as fh:
                fh.write(b"partial")
            raise OSError("disk full")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", flaky_save)
    with pytest.raises(OSError, match="disk full"):
        fit(_model(), data, data, CFG, out=tmp_path, progress=False)
    monkeypatch.setattr(torch, "save", real_save)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["epoch"] == 0
    assert not list(tmp_path.glob(".*.tmp"))


def test_linear_probe_only_moves_the_head() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, ArraySet(), None, FitConfig(epochs=1, batch_size=16, mode="linear"), progress=False)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"head.weight", "head.bias"}


def test_best_model_is_saved_and_reloads(tmp_path) -> None:
    data = ArraySet()
    model = _model()
    res = fit(model, data, data, FitConfig(epochs=2, batch_size=16, selection="last"), out=tmp_path,
              progress=False)
    loaded = load_model(res.best_dir)
    x = torch.rand(4, 3, 32, 32)
    assert torch.allclose(loaded(x), model(x), atol=1e-6)


def test_bad_config_values_are_named() -> None:
    with pytest.raises(ValueError, match="unknown mode 'probe'"):
        fit(_model(), ArraySet(), None, FitConfig(mode="probe"), progress=False)
    with pytest.raises(ValueError, match="unknown schedule"):
        fit(_model(), ArraySet(), None, FitConfig(schedule="step"), progress=False)
    with pytest.raises(ValueError, match="augment_shift must be >= 0 pixels, got -2"):
        fit(_model(), ArraySet(), None, FitConfig(augment_shift=-2), progress=False)


def test_sharded_batches_cover_each_global_batch() -> None:
    data = ArraySet(n=40)
    g = torch.Generator().manual_seed(0)
    single = [lbl for _, lbl in trainer_module.iterate_batches(data, 8, shuffle=True, generator=g)]
    shards = []
    for rank in range(2):
        g = torch.Generator().manual_seed(0)
        shards.append([lbl for _, lbl in trainer_module.iterate_batches(data, 8, True, g, shard=(rank, 2))])
    for full, r0, r1 in zip(single, *shards, strict=True):
        assert sorted(r0.tolist() + r1.tolist()) == sorted(full.tolist())
