"""The embedded default job, end to end on a small budget, and the learnability claim behind it."""

from __future__ import annotations

import json

import pytest
import torch

from traitlens.backbones import load_model
from traitlens.data.traitshapes import colour_histogram_baseline
from traitlens.explain import list_methods
from traitlens.quickstart import QuickstartConfig, run_quickstart
from traitlens.train import evaluate_accuracy

pytestmark = pytest.mark.slow


def test_quickstart_writes_a_complete_report(tmp_path) -> None:
    threads = torch.get_num_threads()
    res = run_quickstart(QuickstartConfig(out=tmp_path / "qs", n_train=512, n_val=128, n_test=128, epochs=1,
                                          n_explain=2, interpretable_train=128, interpretable_epochs=1,
                                          leaderboard_images=8, num_workers=0, progress=False))
    assert res.skipped_methods == {}
    assert set(res.methods) == {m.name for m in list_methods(family="vit")}
    assert set(res.interpretable_accuracy) == {"promptcam", "intr", "scouter"}
    assert torch.get_num_threads() == threads  # the models train one thread each, side by side; then it is restored
    for kind in ("promptcam", "intr", "scouter"):
        assert (tmp_path / "qs" / kind / "best").is_dir()
    html = res.report.read_text()
    for section in ("Model and data", "Explanations of the predicted class", "Leaderboard against the known traits",
                    "Interpretable-by-design models", "colour-histogram baseline"):
        assert section in html
    assert html.count("data:image/png;base64,") >= 6
    for kind in ("promptcam", "intr", "scouter"):  # the models' own maps are leaderboard rows
        assert f"{kind}:native" in html
        same = json.loads((tmp_path / "qs" / f"same_model_{kind}.json").read_text())
        assert same["rows"][0]["method"] == "native" and same["n_images"] == 16
        assert 0 <= same["accuracy"]["value"] <= 1 and same["accuracy"]["n"] == 16
    assert "Native maps against post-hoc maps on the same model" in html and "model accuracy" in html
    assert "Where the time went" in html and res.phase_seconds["train ViT"] > 0
    assert sum(res.phase_seconds.values()) <= res.total_seconds + 1e-6
    model = load_model(res.model_dir)
    assert model.class_names and len(model.class_names) == 8


def test_tiny_vit_beats_colour_histograms(trained_traitshapes) -> None:
    model, train, test = trained_traitshapes
    vit = evaluate_accuracy(model, test)
    histogram = colour_histogram_baseline(train, test)
    assert vit > histogram + 0.15, (vit, histogram)


def test_the_same_command_gives_the_same_models(tmp_path) -> None:
    def run(name: str):
        return run_quickstart(QuickstartConfig(out=tmp_path / name, n_train=256, n_val=64, n_test=64, epochs=1,
                                               n_explain=1, interpretable=("scouter",), interpretable_train=64,
                                               interpretable_epochs=1, leaderboard_images=0, same_model_images=0,
                                               num_workers=0, progress=False))

    first, second = run("a"), run("b")
    assert first.test_accuracy == second.test_accuracy
    assert first.interpretable_accuracy == second.interpretable_accuracy
    a, b = load_model(first.model_dir), load_model(second.model_dir)
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y)
