"""Batch augmentation: flips and shifts checked pixel by pixel; seeded, resumable, off by default."""

from __future__ import annotations

import pytest
import torch

from traitlens.train import FitConfig, fit
from traitlens.train.augment import flip_and_shift

from .test_trainer import ArraySet, _model


def _ramp(batch: int = 6, size: int = 8) -> torch.Tensor:
    """Distinct values everywhere, so every output pixel says where it came from."""
    return torch.arange(batch * 2 * size * size, dtype=torch.float32).view(batch, 2, size, size)


def test_flip_only_flips_about_half_and_keeps_the_rest() -> None:
    x = _ramp(64)
    y = flip_and_shift(x, torch.Generator().manual_seed(0), flip=True)
    flipped = [torch.equal(y[i], x[i].flip(-1)) for i in range(64)]
    kept = [torch.equal(y[i], x[i]) for i in range(64)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))
    assert 20 < sum(flipped) < 44


def test_shift_is_a_translation_with_replicated_border() -> None:
    x = _ramp(16)
    s = 2
    y = flip_and_shift(x, torch.Generator().manual_seed(1), flip=False, max_shift=s)
    padded = torch.nn.functional.pad(x, (s, s, s, s), mode="replicate")
    offsets = []
    for i in range(16):  # each output is one (dy, dx) window of the replicate-padded input
        hits = [(dy, dx) for dy in range(2 * s + 1) for dx in range(2 * s + 1)
                if torch.equal(y[i], padded[i, :, dy:dy + 8, dx:dx + 8])]
        assert len(hits) == 1
        offsets.append(hits[0])
    assert len(set(offsets)) > 3  # per-image offsets, not one for the batch


def test_same_generator_same_batch_and_bad_shift_is_named() -> None:
    x = _ramp()
    a = flip_and_shift(x, torch.Generator().manual_seed(5), max_shift=3)
    b = flip_and_shift(x, torch.Generator().manual_seed(5), max_shift=3)
    assert torch.equal(a, b) and not torch.equal(a, x)
    with pytest.raises(ValueError, match="max_shift must be >= 0"):
        flip_and_shift(x, torch.Generator(), max_shift=-1)


def test_augmented_training_differs_and_resumes_exactly(tmp_path) -> None:
    cfg = FitConfig(epochs=2, batch_size=16, lr=1e-3, seed=3, augment_flip=True, augment_shift=2)
    plain, augmented = _model(), _model()
    fit(plain, ArraySet(), None, FitConfig(epochs=2, batch_size=16, lr=1e-3, seed=3), progress=False)
    fit(augmented, ArraySet(), ArraySet(), cfg, out=tmp_path / "a", progress=False)
    assert not torch.allclose(plain.head.weight, augmented.head.weight)

    def crash(epoch: int, _metrics: dict) -> None:
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(_model(), ArraySet(), ArraySet(), cfg, out=tmp_path / "b", progress=False, on_epoch_end=crash)
    resumed = _model(seed=9)
    fit(resumed, ArraySet(), ArraySet(), cfg, out=tmp_path / "b", resume=True, progress=False)
    for (name, a), b in zip(augmented.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
