"""`benchmarks/token_probes.py`: per-block token features and the linear probe behind the Deep Prompt-CAM analysis."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from . import make_vit, one_thread  # noqa: F401  (autouse fixture)

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "token_probes.py"


def _load():
    spec = importlib.util.spec_from_file_location("token_probes", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("token_probes", module)
    spec.loader.exec_module(module)
    return module


tp = _load()


def test_block_features_are_each_blocks_output_tokens() -> None:
    """CLS and mean patch token of every block's output, before the final norm, across batch chunks."""
    vit = make_vit(depth=3)
    x = torch.randn(5, 3, 16, 16, dtype=torch.float64)
    feats = tp.block_features(vit, x, batch=2)
    t = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
    assert len(feats) == 3
    for blk, f in zip(vit.blocks, feats, strict=True):
        t = blk(t)
        assert torch.allclose(f["cls"], t[:, 0], atol=1e-10)
        assert torch.allclose(f["mean_patch"], t[:, 1:].mean(1), atol=1e-10)


def test_linear_probe_reads_separable_features_and_not_noise() -> None:
    g = torch.Generator().manual_seed(0)
    y_train, y_test = torch.randint(0, 3, (300,), generator=g), torch.randint(0, 3, (300,), generator=g)
    noise_train, noise_test = torch.randn(300, 8, generator=g), torch.randn(300, 8, generator=g)
    informative = tp.linear_probe_accuracy(noise_train + 3 * _one_hot(y_train, 8), y_train,
                                           noise_test + 3 * _one_hot(y_test, 8), y_test)
    uninformative = tp.linear_probe_accuracy(noise_train, y_train, noise_test, y_test)
    assert informative > 0.95
    assert uninformative < 0.5  # chance is 1/3


def _one_hot(y: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(y, width).float()
