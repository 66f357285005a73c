"""The metrics package's public homes: package exports, the faithfulness / localisation facades, shared pieces."""

from __future__ import annotations

import pytest
import torch

import traitlens.metrics as metrics
from traitlens.metrics import faithfulness, localisation
from traitlens.metrics._registry import knob_record
from traitlens.metrics.inputs import logits_of, resolve_targets
from traitlens.metrics.stats import minmax, nan_where


def test_package_exports_the_names_other_layers_use():
    for name in ("boxes_to_masks", "raw_pixel_maps", "predict", "logits_of", "MetricInfo", "dilate", "energy_share"):
        assert name in metrics.__all__ and hasattr(metrics, name)
    assert all(hasattr(metrics, n) for n in metrics.__all__)


def test_facades_reexport_every_family():
    for name in faithfulness.__all__:
        assert getattr(faithfulness, name) is not None
    assert faithfulness.deletion is metrics.deletion and faithfulness.road is metrics.road
    assert localisation.pointing_game is metrics.pointing_game and localisation.mask_overlap is metrics.mask_overlap
    assert {"agcam", "iba"} <= set(faithfulness.ABPC_PRESETS) and "samek" in faithfulness.AOPC_PRESETS


def test_small_shared_pieces():
    assert knob_record(a=1, b=None, c="x") == {"a": 1, "c": "x"}
    assert torch.equal(logits_of({"logits": torch.ones(2)}), torch.ones(2))
    out, degenerate = minmax(torch.tensor([[[1.0, 3.0]], [[2.0, 2.0]]]))
    assert out.tolist() == [[[0.0, 1.0]], [[0.0, 0.0]]] and degenerate.tolist() == [False, True]
    assert nan_where(torch.ones(2), torch.tensor([True, False])).isnan().tolist() == [True, False]
    with pytest.raises(ValueError, match="needs the model"):
        resolve_targets("pred", None, None, torch.zeros(1, 3, 4, 4), None, 1)
