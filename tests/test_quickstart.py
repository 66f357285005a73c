"""The embedded default job, end to end on a small budget, and the learnability claim behind it; the report's
words (the "what was found" paragraph, accuracy warnings, the leaderboard legend) on synthetic numbers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from quickstart_tiny import tiny_quickstart_config

from traitlens.backbones import load_model
from traitlens.data.traitshapes import TraitShapes, TraitShapesConfig, colour_histogram_baseline, materialize
from traitlens.evaluation import COLUMNS
from traitlens.explain import list_methods
from traitlens.quickstart import QuickstartConfig, _save_samples, run_quickstart, sample_name
from traitlens.report import (
    COLUMN_LEGEND,
    SOURCE_COLOURS,
    HtmlReport,
    accuracy_status,
    accuracy_warning,
    findings,
    leaderboard_legend,
    near_chance_threshold,
)
from traitlens.train import evaluate_accuracy


@pytest.mark.slow
def test_quickstart_writes_a_complete_report(tmp_path) -> None:
    threads = torch.get_num_threads()
    res = run_quickstart(tiny_quickstart_config(tmp_path / "qs", n_train=512, n_val=128, n_test=128, n_explain=2,
                                                interpretable_train=128, leaderboard_images=8,
                                                same_model_images=16, atlas_per_class=4))
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
    for folder in ("vit-cdam", "promptcam-native", "intr-native", "scouter-native"):  # the atlases, linked
        index = tmp_path / "qs" / "atlas" / folder / "index.html"
        assert index.is_file() and f'href="atlas/{folder}/index.html"' in html
        summary = json.loads((index.parent / "atlas.json").read_text())
        assert summary["n_images"] == 4 * 8 and summary["n_hit_classes"] > 0
    assert "Trait atlas" in html and res.phase_seconds["trait atlas"] > 0
    assert "Where the time went" in html and res.phase_seconds["train ViT"] > 0
    assert sum(res.phase_seconds.values()) <= res.total_seconds + 1e-6
    model = load_model(res.model_dir)
    assert model.class_names and len(model.class_names) == 8
    # the report's words: the summary on top, the leaderboard legend, a warning for every model under the target
    assert html.index("What was found") < html.index("Model and data")
    assert "The ViT reached" in html or "The ViT is near chance" in html
    assert "What the columns and colours mean" in html and 'class="swatch"' in html
    for kind, acc in {"ViT": res.test_accuracy, **res.interpretable_accuracy}.items():
        if acc < 0.85:
            assert f"{kind} reached" in html
    labels = json.loads((tmp_path / "qs" / "samples" / "labels.json").read_text())
    assert len(labels) == 8 and set(labels.values()) == set(model.class_names)


@pytest.mark.slow
def test_tiny_vit_beats_colour_histograms(trained_traitshapes) -> None:
    model, train, test = trained_traitshapes
    vit = evaluate_accuracy(model, test)
    histogram = colour_histogram_baseline(train, test)
    assert vit > histogram + 0.15, (vit, histogram)


@pytest.mark.slow
def test_the_same_command_gives_the_same_models(tmp_path) -> None:
    def run(name: str):
        return run_quickstart(tiny_quickstart_config(tmp_path / name, interpretable=("scouter",),
                                                     interpretable_train=64))

    first, second = run("a"), run("b")
    assert first.test_accuracy == second.test_accuracy
    assert first.interpretable_accuracy == second.interpretable_accuracy
    a, b = load_model(first.model_dir), load_model(second.model_dir)
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y)


# ----------------------------------------------------------------------------- sample images for the README


def test_samples_are_the_first_test_images_of_each_class(tmp_path) -> None:
    test = materialize(TraitShapes(TraitShapesConfig(num_classes=4, size=32), "test", 40), 0, False)
    labels = _save_samples(test, tmp_path / "samples", per_class=2)
    firsts = {}
    for i in range(len(test)):
        firsts.setdefault(int(test.labels[i]), []).append(i)
    assert len(labels) == 8 and sorted(set(labels.values())) == sorted(test.classes)
    for c, idx in firsts.items():
        for k in range(2):
            name = sample_name(test.classes[c], k)
            assert "/" not in name and labels[name] == test.classes[c]
            saved = np.asarray(Image.open(tmp_path / "samples" / name))
            assert np.array_equal(saved, test.images[idx[k]].permute(1, 2, 0).numpy())  # lossless, same image
    assert json.loads((tmp_path / "samples" / "labels.json").read_text()) == labels
    assert sample_name("red-head/plain/fan/spike", 0) == "red-head_plain_fan_spike_0.png"


# ----------------------------------------------------------------------------- accuracy warnings


def test_near_chance_is_a_warning_of_its_own() -> None:
    assert near_chance_threshold(8) == pytest.approx(0.125 + 0.25 * 0.875)
    assert accuracy_status(0.14, 8, 0.85) == "near chance"
    assert accuracy_status(0.60, 8, 0.85) == "below target"
    assert accuracy_status(0.90, 8, 0.85) == "ok"
    assert accuracy_status(0.55, 2, 0.85) == "near chance"  # 2 classes: chance 50 %, line 62.5 %
    near, below = accuracy_warning("intr", 0.14, 8, 0.85), accuracy_warning("intr", 0.60, 8, 0.85)
    assert near is not None and near.startswith("Near chance") and "12.5%" in near
    assert below is not None and below.startswith("Below target") and "85%" in below
    assert accuracy_warning("intr", 0.90, 8, 0.85) is None
    from traitlens.quickstart import _warn

    report = HtmlReport("t")
    _warn(report, "intr", 0.14, QuickstartConfig())
    _warn(report, "scouter", 0.60, QuickstartConfig())
    _warn(report, "promptcam", 0.90, QuickstartConfig())
    html = report.render()
    assert '<p class="warning">Near chance: intr' in html and '<p class="caution">Below target: scouter' in html
    assert "promptcam" not in html


# ----------------------------------------------------------------------------- "what was found"


def _row(method: str, energy: float, source: str = "traitlens", model: str = "ViT", ci: float = 0.02) -> dict:
    return {"method": method, "model": model, "source": source, "trait_energy": energy,
            "trait_energy_ci": (energy - ci, energy + ci)}


def test_findings_name_the_best_method_and_follow_its_numbers() -> None:
    rows = [_row("cdam", 0.42), _row("rollout", 0.20), _row("pgc:gradcam", 0.30, "pytorch-grad-cam"),
            _row("promptcam:native", 0.55, "native", "promptcam")]
    acc = {"ViT": 0.91, "promptcam": 0.88}
    f = findings(acc, num_classes=8, target=0.85, baseline=0.46, rows=rows)
    assert f.best_posthoc == "cdam" and f.best_native == "promptcam" and f.native_beats_posthoc is True
    assert f.separated is True and f.beats_baseline is True and f.main_status == "ok"
    text = f.text()
    assert "91.0%" in text and "45 points above the colour-histogram baseline (46.0%)" in text
    assert "cdam scored highest on trait_energy (0.420), ahead of pgc:gradcam (0.300)" in text
    assert "do not overlap" in text and "(promptcam:native, trait_energy 0.550) beat" in text
    assert "promptcam (88.0%) reached the 85% target" in text
    # the same table with other numbers says other things
    rows2 = [_row("cdam", 0.31, ci=0.05), _row("rollout", 0.33, ci=0.05),
             _row("promptcam:native", 0.25, "native", "promptcam")]
    f2 = findings({"ViT": 0.40, "promptcam": 0.70}, num_classes=8, target=0.85, baseline=0.46, rows=rows2)
    assert f2.best_posthoc == "rollout" and f2.separated is False and f2.native_beats_posthoc is False
    assert f2.beats_baseline is False and f2.main_status == "below target"
    t2 = f2.text()
    assert "no better than the colour-histogram baseline" in t2 and "below the 85% target" in t2
    assert "intervals overlap" in t2 and ") did not beat the best post-hoc map (rollout, 0.330)" in t2
    assert "promptcam (70.0%) stayed below it" in t2


def test_findings_leave_near_chance_models_out_of_the_comparison() -> None:
    rows = [_row("cdam", 0.30), _row("intr:native", 0.90, "native", "intr"),
            _row("scouter:native", 0.20, "native", "scouter")]
    f = findings({"ViT": 0.9, "intr": 0.13, "scouter": 0.86}, num_classes=8, target=0.85, rows=rows)
    assert f.best_native == "scouter" and f.native_beats_posthoc is False  # intr's 0.90 is not evidence
    assert "intr (13.0%) stayed near chance" in f.text()
    dead = findings({"ViT": 0.13}, num_classes=8, target=0.85, baseline=0.3, rows=rows)
    assert dead.main_status == "near chance" and dead.text().startswith("The ViT is near chance (13.0%")
    assert findings({}, num_classes=8, target=0.85).text() == ""
    nan = findings({"ViT": 0.9}, num_classes=8, target=0.85, rows=[_row("cdam", math.nan), _row("gae", 0.1)])
    assert nan.best_posthoc == "gae"  # a method without a value is not ranked


# ----------------------------------------------------------------------------- the leaderboard legend


def test_the_legend_explains_every_leaderboard_column_with_its_direction() -> None:
    header = ["method", "model", "model accuracy", "source", "trait_pg", "trait_energy", "trait_iou",
              "object_energy", "deletion", "insertion", "s_per_img"]  # the quickstart's table
    legend = leaderboard_legend(header)
    assert [r[0] for r in legend] == header and all(r[1] for r in legend)
    for col, (_, direction) in COLUMNS.items():  # every column the leaderboard can compute, evaluation's direction
        assert COLUMN_LEGEND[col][1] == direction
    assert dict((r[0], r[2]) for r in leaderboard_legend(["deletion ↓", "insertion ↑"])) == {
        "deletion": "lower\u00a0↓", "insertion": "higher\u00a0↑"}
    with pytest.raises(KeyError, match="no legend for leaderboard column 'new_metric'"):
        leaderboard_legend(["method", "new_metric"])


def test_leaderboard_bars_have_the_colours_the_legend_names() -> None:
    from matplotlib.patches import Rectangle

    from traitlens.report.legend import leaderboard_figure_artist

    rows = [dict(_row(m, e, src), trait_pg=e, ins_minus_del=e / 2)
            for m, e, src in [("cdam", 0.4, "traitlens"), ("pcam:native", 0.5, "native"),
                              ("pgc:gradcam", 0.3, "pytorch-grad-cam"), ("captum:ig", 0.2, "captum")]]
    fig = leaderboard_figure_artist(rows)
    import matplotlib.colors as mcolors

    bars = [p for p in fig.axes[0].patches if isinstance(p, Rectangle)]
    assert [mcolors.to_hex(b.get_facecolor()) for b in bars] == [SOURCE_COLOURS[r["source"]] for r in rows]
    legend = {t.get_text() for t in fig.legends[0].get_texts()}
    assert legend == set(SOURCE_COLOURS)
    import matplotlib.pyplot as plt

    plt.close(fig)
