"""`--amp` (and `--device`) on the command line: amp-safe methods run under autocast with maps within their
registry tolerance, amp-unsafe ones are refused in one line before anything is written."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_main
from traitlens.evaluation.cli import amp_options
from traitlens.explain import AmpUnsafeMethodError, amp_refusal, get_method, list_methods
from traitlens.explain._amp import cpu_has_bf16


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def test_amp_refusal_names_the_safe_methods():
    safe = [m.name for m in list_methods() if m.amp_tolerance is not None]
    assert "cdam" in safe and "lrp" not in safe
    assert amp_refusal("cdam") is None and amp_refusal(get_method("agcam")) is None
    why = amp_refusal("lrp")
    assert why is not None and "'lrp' is amp-unsafe" in why and all(name in why for name in safe)
    with pytest.raises(ValueError, match="unknown method"):
        amp_refusal("nope")


def test_amp_options_mark_every_method_or_refuse_all_unsafe_ones():
    got = amp_options(["cdam", "rollout"], {"rollout": {"discard_ratio": 0.5}})
    assert got == {"cdam": {"amp": True}, "rollout": {"discard_ratio": 0.5, "amp": True}}
    with pytest.raises(AmpUnsafeMethodError, match="lrp, tam"):
        amp_options(["cdam", "lrp", "tam"], None)


def test_explain_with_amp_stays_within_the_tolerance(tmp_path, micro_model_dir, image_file, monkeypatch, capsys):
    maps = {}
    for flag in ("--no-amp", "--amp"):
        out = tmp_path / flag.strip("-")
        args = ["explain", str(image_file), "--model", str(micro_model_dir), "--method", "cdam", "--target", "topk:2",
                "--device", "cpu", "--normalize", "none", "--out", str(out)]
        code, err = run_main(monkeypatch, capsys, *(args if flag == "--no-amp" else [*args, "--amp"]))
        assert code == 0, err
        maps[flag] = np.load(out / "cdam.npz")["patch_maps"].astype(np.float64)
    fp32, amp = maps["--no-amp"], maps["--amp"]
    assert fp32.dtype == amp.dtype and np.ptp(fp32) > 0
    error = np.abs(amp - fp32).max() / np.ptp(fp32)
    assert error <= get_method("cdam").amp_tolerance
    if cpu_has_bf16():
        assert error > 0  # bf16 really ran on this CPU


@pytest.mark.parametrize("command", ["explain", "atlas", "evaluate"])
def test_amp_unsafe_method_is_refused_in_one_line(tmp_path, micro_model_dir, image_file, monkeypatch, capsys, command):
    out = tmp_path / "out"
    args = {"explain": ["explain", str(image_file), "--model", str(micro_model_dir), "--method", "lrp"],
            "atlas": ["atlas", "--model", str(micro_model_dir), "--data", "traitshapes:4", "--method", "lrp"],
            "evaluate": ["evaluate", "--model", str(micro_model_dir), "--data", "traitshapes:4", "--methods",
                         "cdam,lrp", "--metrics", "deletion"]}[command]
    code, err = run_main(monkeypatch, capsys, *args, "--out", str(out), "--amp")
    assert code == 2 and "amp-unsafe" in err and "lrp" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_atlas_resume_must_match_amp(tmp_path, micro_model_dir, monkeypatch, capsys):
    out = tmp_path / "atlas"
    args = ["atlas", "--model", str(micro_model_dir), "--data", "traitshapes:4", "--method", "cdam", "--device", "cpu",
            "--max-per-class", "1", "--out", str(out)]
    code, err = run_main(monkeypatch, capsys, *args, "--amp")
    assert code == 0, err
    assert (out / "index.html").exists()
    code, err = run_main(monkeypatch, capsys, *args)  # same folder without --amp: other settings
    assert code == 2 and "options" in err and "Traceback" not in err


def test_evaluate_with_amp_keeps_its_own_cache(tmp_path, micro_model_dir, monkeypatch, capsys):
    out = tmp_path / "eval"
    args = ["evaluate", "--model", str(micro_model_dir), "--data", "traitshapes:4", "--methods", "cdam", "--metrics",
            "deletion", "--out", str(out)]
    for extra in ([], ["--amp"]):
        code, err = run_main(monkeypatch, capsys, *args, *extra)
        assert code == 0, err
    folders = sorted(p.name for p in (out / "cache").glob("*/cdam-*"))
    assert len(folders) == 2  # the float32 and the amp maps are cached apart, never mixed on a resume
