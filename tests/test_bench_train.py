"""benchmarks/bench_train.py: the ViT-B/16 preset's configuration, and the whole script on a tiny ViT (CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench_train(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_train

    return bench_train


def test_preset_vitb16_and_explicit_options_win(bench_train):
    args = bench_train.parse(["--preset", "vitb16"])
    assert (args.model, args.img, args.classes, args.batch, args.steps) == ("vit_base_patch16_224", 224, 200, 8, 3)
    args = bench_train.parse(["--preset", "vitb16", "--batch", "2", "--steps=1"])
    assert (args.batch, args.steps, args.classes) == (2, 1, 200)
    with pytest.raises(SystemExit):
        bench_train.parse(["--modes", "finetune,bogus"])


TINY = ["--model", "vit_tiny_patch16_224", "--img", "32", "--classes", "5", "--batch", "2", "--steps", "1",
        "--device", "cpu"]


@pytest.mark.parametrize("mode", ["promptcam", "intr", "scouter"])
def test_worker_trains_each_model(bench_train, mode):
    """In-process rows (as the GPU check runs them): positive speed, memory figures, Prompt-CAM's few parameters."""
    args = bench_train.parse([*TINY, "--amp"])
    ft, row = bench_train.worker("finetune", args), bench_train.worker(mode, args)
    assert row["mode"] == mode and row["device"] == "cpu" and row["images_per_s"] > 0
    assert row["peak_rss_mb"] > 0 and row["peak_mb"] >= 0 and row["memory"] == "peak RSS growth"
    assert 0 < row["trainable"] <= row["total"] and ft["trainable"] == ft["total"]
    if mode == "promptcam":  # prompts and scorer only: the backbone is frozen
        assert row["trainable"] < ft["trainable"] / 10


def test_main_runs_subprocesses_and_writes_json_and_markdown(bench_train, tmp_path, capsys):
    out = tmp_path / "train.json"
    rows = bench_train.main([*TINY, "--modes", "scouter", "--out", str(out)])
    assert [r["mode"] for r in rows] == ["finetune", "scouter"]
    saved = json.loads(out.read_text())
    assert saved["rows"] == rows and saved["config"]["model"] == "vit_tiny_patch16_224"
    table = capsys.readouterr().out
    assert "| finetune |" in table and "| scouter |" in table and "| 1.00 | 1.00 |" in table  # ft against itself
