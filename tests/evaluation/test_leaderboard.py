"""Leaderboard mechanics on a random micro ViT, peer adapters, contrast maps, trait report and the CLI function."""

from __future__ import annotations

import math

import pytest
import torch

from traitlens.backbones import normalize, save_model
from traitlens.evaluation import (
    cli_evaluate,
    contrast_explanation,
    leaderboard,
    leaderboard_small,
    leaderboard_table,
    peer_explainer,
    score_contrast,
    trait_report,
)
from traitlens.evaluation.cli import resolve_methods, resolve_metric_names
from traitlens.explain import explain


def test_leaderboard_rows_columns_and_figure(micro_setup):
    model, data = micro_setup
    lb = leaderboard(model, data, ["cdam", "rollout"], peers=[], n_images=4, steps=4, n_boot=50, progress=False)
    assert [r["method"] for r in lb.rows] == sorted(["cdam", "rollout"], key=lambda m: -lb.results.value(
        m, "energy_pointing_game@trait"))  # sorted by trait energy, best first
    assert lb.png[:4] == b"\x89PNG"
    cdam = next(r for r in lb.rows if r["method"] == "cdam")
    rollout = next(r for r in lb.rows if r["method"] == "rollout")
    assert cdam["source"] == "traitlens" and cdam["class_specific"] and cdam["signed"]
    assert math.isnan(rollout["contrast_energy"])  # class-agnostic: the contrast is all zero (NaN, excluded)
    assert 0 <= cdam["trait_energy"] <= 1 and cdam["s_per_img"] > 0
    assert lb.knobs["metric_options"]["pointing_game@trait"]["tol"] == 2  # 15 px scaled to 32 px
    md = lb.to_markdown()
    assert "trait_energy ↑" in md and "deletion ↓" in md
    with pytest.raises(ValueError, match="TraitShapes"):
        leaderboard(model, [data[0]], ["cdam"], peers=[])


def test_leaderboard_small_returns_rows_and_png(micro_setup):
    model, data = micro_setup
    rows, png = leaderboard_small(model, data, ["rollout", "raw_attention"], n_images=4, peers=[])
    assert {r["method"] for r in rows} == {"rollout", "raw_attention"} and png[:4] == b"\x89PNG"
    assert "contrast_energy" not in rows[0]
    header, body = leaderboard_table(rows)
    assert header[:4] == ["method", "model", "model acc", "source"] and "trait_energy ↑" in header and len(body) == 2


def test_leaderboard_rows_state_their_models_accuracy(micro_setup):
    model, data = micro_setup
    lb = leaderboard(model, data, ["rollout"], peers=[], columns=["trait_energy"], n_images=4, n_boot=20,
                     progress=False, model_name="vit")
    expected = sum(int(model(normalize(model, data[i]["image"][None])).argmax()) == int(data[i]["label"])
                   for i in range(4)) / 4
    assert lb.rows[0]["model"] == "vit" and lb.rows[0]["model_acc"] == pytest.approx(expected)
    given = leaderboard(model, data, ["rollout"], peers=[], columns=["trait_energy"], n_images=4, n_boot=20,
                        progress=False, model_name="vit", accuracies={"vit": 0.25})
    assert given.rows[0]["model_acc"] == 0.25
    assert "| rollout | vit | 0.250 |" in given.to_markdown()


def test_peer_adapters_shapes_and_no_leaks(micro_setup):
    pytest.importorskip("pytorch_grad_cam")
    pytest.importorskip("captum")
    model, data = micro_setup
    x = torch.stack([data[i]["image"] for i in range(2)])
    from traitlens.backbones import normalize

    x = normalize(model, x)
    hooks = sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())
    targets = torch.tensor([[0, 1], [1, 0]])
    cam = peer_explainer("pgc:gradcam")(model, x, targets)
    assert cam.maps.shape == (2, 2, 32, 32) and cam.patch_maps.shape == (2, 2, 4, 4)
    assert cam.maps.min() >= 0 and cam.maps.max() <= 1 + 1e-6
    ig = peer_explainer("captum:ig", n_steps=8)(model, x, targets)
    assert ig.signed and ig.maps.shape == (2, 2, 32, 32)
    # IG completeness: the sum over pixels and channels ≈ f(x) − f(0); the channel mean keeps 1/3 of it
    with torch.no_grad():
        gap = model(x).gather(1, targets) - model(torch.zeros_like(x)).gather(1, targets)
    assert torch.allclose(ig.maps.sum((-2, -1)) * 3, gap, rtol=0.2, atol=0.05)
    assert sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules()) == hooks
    assert all(p.grad is None for p in model.parameters())


def test_peer_rows_go_through_the_cache(micro_setup, tmp_path):
    pytest.importorskip("pytorch_grad_cam")
    model, data = micro_setup
    kw = dict(peers=["pgc:gradcam"], columns=["trait_energy", "contrast_energy"], n_images=4, n_boot=0,
              progress=False, out=tmp_path)
    first = leaderboard(model, data, ["cdam"], **kw)
    assert not first.results.skipped and any(r["method"] == "pgc:gradcam" for r in first.rows)
    assert list((tmp_path / "cache").rglob("*.safetensors"))
    again = leaderboard(model, data, ["cdam"], **kw)  # from the cache: same values
    assert [r["trait_energy"] for r in again.rows] == [r["trait_energy"] for r in first.rows]


def test_contrast_maps_are_differences_and_scored(micro_setup):
    model, data = micro_setup
    from traitlens.backbones import normalize

    x = normalize(model, torch.stack([data[i]["image"] for i in range(3)]))
    c = contrast_explanation(model, x, 0, 1, method="cdam")
    a = explain(model, x, method="cdam", target=0)
    b = explain(model, x, method="cdam", target=1)
    assert torch.allclose(c.maps, a.maps - b.maps, atol=1e-6) and c.signed
    assert torch.allclose(contrast_explanation(model, x, 1, 1, method="cdam").maps, torch.zeros_like(c.maps))
    scores = score_contrast(model, data, ["cdam"], n_images=4, n_figure=1)
    row = scores.rows[0]
    assert row["method"] == "cdam" and row["n_pairs"] == 4 and 0 <= row["contrast_energy"] <= 1
    assert scores.png[:4] == b"\x89PNG"


def test_trait_report_shares_sum_to_one_and_heads(micro_setup):
    model, data = micro_setup
    rep = trait_report(model, data, method="raw_attention", n_images=6)
    assert rep.parts[-1] == "background" and "head" in rep.parts
    for row in rep.rows:
        assert sum(row[p] for p in rep.parts) == pytest.approx(1.0)  # TraitShapes parts are disjoint
        assert row["expected"] in ("head", "wing") and isinstance(row["hit"], bool)
    assert len(rep.head_rows) == model.blocks[-1].attn.num_heads  # raw attention has per-head maps
    assert rep.png[:4] == b"\x89PNG"


def test_cli_evaluate_from_a_saved_model(micro_setup, tmp_path):
    model, _ = micro_setup
    save_model(model, tmp_path / "model")
    res = cli_evaluate(tmp_path / "model", "traitshapes:4", "rollout", "gini,area_size", tmp_path / "eval",
                       progress=False)
    assert (tmp_path / "eval" / "results.md").is_file() and res.value("rollout", "gini") >= 0
    assert resolve_methods("all")[:1] and "cdam" in resolve_methods("cdam*")
    assert resolve_metric_names("default,iou@trait")[-1] == "iou@trait"
