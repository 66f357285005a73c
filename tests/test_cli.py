"""The `traitlens` command line, end to end on tiny models and data."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from traitlens.backbones import create_preset, load_model, save_model
from traitlens.cli import app
from traitlens.data.traitshapes import TraitShapes, TraitShapesConfig, export_cub
from traitlens.explain import list_methods, method_refusal, supported_methods
from traitlens.models import build_interpretable
from traitlens.train import load_checkpoint

runner = CliRunner()


@pytest.fixture
def micro_model(tmp_path):
    path = tmp_path / "model"
    save_model(create_preset("traitlens-vit-micro", 3, class_names=["ant", "bee", "cow"]), path)
    return path


@pytest.fixture
def image_files(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_methods_lists_the_registry() -> None:
    result = runner.invoke(app, ["methods"])
    assert result.exit_code == 0
    for info in list_methods():
        assert info.name in result.output


@pytest.fixture
def promptcam_model(tmp_path):
    path = tmp_path / "pcam"
    save_model(build_interpretable("promptcam", "traitlens-vit-micro", 3, class_names=["ant", "bee", "cow"],
                                   variant="shallow"), path)
    return path


def test_methods_for_a_model_lists_only_what_runs_on_it(promptcam_model) -> None:
    result = runner.invoke(app, ["methods", "--model", str(promptcam_model)])
    assert result.exit_code == 0, result.output
    supported = {m.name for m in supported_methods(load_model(promptcam_model))}
    assert {"native", "cdam", "gradcam_vit", "smoothgrad"} <= supported and "rollout" not in supported
    listed = {line.split()[0] for line in result.output.splitlines()[2:]}
    assert listed == supported
    assert f"{len(supported)} of {len(list_methods())} methods run on it" in result.output


def test_explain_refuses_an_incompatible_method_with_the_registry_reason(tmp_path, promptcam_model,
                                                                         image_files) -> None:
    why = method_refusal(load_model(promptcam_model), "rollout")
    assert why is not None
    proc = subprocess.run([sys.executable, "-m", "traitlens", "explain", str(image_files[0]), "--model",
                           str(promptcam_model), "--method", "rollout", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: {why}"
    assert "Traceback" not in proc.stderr and not (tmp_path / "o").exists()
    ok = runner.invoke(app, ["explain", str(image_files[0]), "--model", str(promptcam_model), "--method", "cdam",
                             "--target", "bee", "--out", str(tmp_path / "ok")])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "ok" / "img0_cdam_bee.png").is_file()


def test_explain_writes_overlays_and_raw_maps(tmp_path, micro_model, image_files) -> None:
    out = tmp_path / "maps"
    result = runner.invoke(app, ["explain", *map(str, image_files), "--model", str(micro_model),
                                 "--method", "cdam", "--target", "topk:2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 4  # 2 images × 2 targets
    assert Image.open(pngs[0]).size == (32, 32)  # resized to the model's input
    raw = np.load(out / "cdam.npz")
    assert raw["patch_maps"].shape == (2, 2, 4, 4) and str(raw["method"]) == "cdam"
    assert "ant" in result.output or "bee" in result.output or "cow" in result.output


def test_explain_by_class_name(tmp_path, micro_model, image_files) -> None:
    result = runner.invoke(app, ["explain", str(image_files[0]), "--model", str(micro_model), "--method",
                                 "rollout", "--target", "bee", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "img0_rollout_bee.png").is_file()


def test_explain_with_one_target_per_image(tmp_path, micro_model, image_files) -> None:
    """'--target 0,cow' is a list with one class per image (parse_target_text)."""
    result = runner.invoke(app, ["explain", *map(str, image_files), "--model", str(micro_model), "--method",
                                 "rollout", "--target", "0,cow", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "o").glob("*.png")) == ["img0_rollout_ant.png", "img1_rollout_cow.png"]


@pytest.mark.parametrize(("args", "message"), [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--target", "zebra"], "unknown class name 'zebra'"),
    (["--corrupt"], "cannot read image"),
])
def test_user_errors_are_one_line(tmp_path, micro_model, image_files, args, message) -> None:
    img = image_files[0]
    if args == ["--corrupt"]:
        img = tmp_path / "broken.png"
        img.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        args = []
    proc = subprocess.run([sys.executable, "-m", "traitlens", "explain", str(img), "--model", str(micro_model),
                           "--out", str(tmp_path / "o"), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_train_interpretable_model_from_the_cli(tmp_path) -> None:
    cfg = TraitShapesConfig(size=32, num_classes=3, seed=1)
    export_cub(TraitShapes(cfg, "train", 24), tmp_path / "data", test=TraitShapes(cfg, "test", 6))
    backbone = tmp_path / "backbone"
    save_model(create_preset("traitlens-vit-micro", 3), backbone)
    result = runner.invoke(app, ["train", "promptcam", "--data", str(tmp_path / "data"), "--backbone", str(backbone),
                                 "--epochs", "1", "--batch-size", "8", "--out", str(tmp_path / "run"),
                                 "--augment-flip", "--augment-shift", "2"])
    assert result.exit_code == 0, result.output
    recipe = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["config"]
    assert (recipe["augment_flip"], recipe["augment_shift"], recipe["mode"]) == (True, 2, "model")
    net = load_model(tmp_path / "run" / "best")
    assert type(net).__name__ == "PromptCAM"
    assert net.class_names == list(TraitShapes(cfg, "train", 1).classes)


def test_data_traitshapes_exports_cub_layout(tmp_path) -> None:
    result = runner.invoke(app, ["data", "traitshapes", "--out", str(tmp_path / "ts"), "--classes", "4",
                                 "--size", "32", "--n", "8", "--n-test", "4", "--workers", "0"])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "ts" / "images.txt").read_text().splitlines()
    assert len(lines) == 12


def test_evaluate_with_least_similar_class_targets(tmp_path, micro_model) -> None:
    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", "--model", str(micro_model), "--data", "traitshapes:4", "--methods",
                                 "rollout,cdam", "--metrics", "energy_pointing_game@class", "--target", "lsc",
                                 "--lsc", "traits", "--out", str(out)])
    assert result.exit_code == 0, result.output
    md = (out / "results.md").read_text()
    assert "lsc" in md and "traits" in md
    assert "rollout" in result.output and "cdam" in result.output
    bad = runner.invoke(app, ["evaluate", "--model", str(micro_model), "--data", "traitshapes:4", "--target", "lsc",
                              "--lsc", "wordnet", "--out", str(tmp_path / "bad")])
    assert bad.exit_code != 0 and "wordnet" in (bad.output + str(bad.exception)).lower()
