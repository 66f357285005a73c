"""The `traitlens` command line, end to end on tiny models and data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import png16, png_bytes, run_main
from traitlens.backbones import create_preset, load_model, save_model
from traitlens.cli import app, output_stems
from traitlens.data.traitshapes import TraitShapes, TraitShapesConfig, export_cub
from traitlens.explain import list_methods, method_refusal, supported_methods
from traitlens.models import build_interpretable
from traitlens.train import load_checkpoint

runner = CliRunner()


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
    rows = {line.split()[0]: line.split() for line in result.output.splitlines()[1:]}
    for info in list_methods():
        assert info.name in rows
        # the amp column: the tolerance `--amp` keeps the maps within, or '-' where --amp is refused
        assert rows[info.name][4] == ("-" if info.amp_tolerance is None else f"{info.amp_tolerance:g}")


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


def test_explain_writes_overlays_and_raw_maps(tmp_path, micro_model_dir, image_files) -> None:
    out = tmp_path / "maps"
    result = runner.invoke(app, ["explain", *map(str, image_files), "--model", str(micro_model_dir),
                                 "--method", "cdam", "--target", "topk:2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 4  # 2 images × 2 targets
    assert Image.open(pngs[0]).size == (32, 32)  # resized to the model's input
    raw = np.load(out / "cdam.npz")
    assert raw["patch_maps"].shape == (2, 2, 4, 4) and str(raw["method"]) == "cdam"
    assert "ant" in result.output or "bee" in result.output or "cow" in result.output


def test_explain_by_class_name(tmp_path, micro_model_dir, image_files) -> None:
    result = runner.invoke(app, ["explain", str(image_files[0]), "--model", str(micro_model_dir), "--method",
                                 "rollout", "--target", "bee", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "img0_rollout_bee.png").is_file()


def test_explain_with_one_target_per_image(tmp_path, micro_model_dir, image_files) -> None:
    """'--target 0,cow' is a list with one class per image (parse_target_text)."""
    result = runner.invoke(app, ["explain", *map(str, image_files), "--model", str(micro_model_dir), "--method",
                                 "rollout", "--target", "0,cow", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "o").glob("*.png")) == ["img0_rollout_ant.png", "img1_rollout_cow.png"]


@pytest.mark.parametrize(("args", "message"), [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--target", "zebra"], "unknown class name 'zebra'"),
    (["--corrupt"], "cannot read image"),
])
def test_user_errors_are_one_line(tmp_path, micro_model_dir, image_files, args, message) -> None:
    img = image_files[0]
    if args == ["--corrupt"]:
        img = tmp_path / "broken.png"
        img.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        args = []
    proc = subprocess.run([sys.executable, "-m", "traitlens", "explain", str(img), "--model", str(micro_model_dir),
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


def test_evaluate_with_least_similar_class_targets(tmp_path, micro_model_dir) -> None:
    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", "--model", str(micro_model_dir), "--data", "traitshapes:4", "--methods",
                                 "rollout,cdam", "--metrics", "energy_pointing_game@class", "--target", "lsc",
                                 "--lsc", "traits", "--out", str(out)])
    assert result.exit_code == 0, result.output
    md = (out / "results.md").read_text()
    assert "lsc" in md and "traits" in md
    assert "rollout" in result.output and "cdam" in result.output
    bad = runner.invoke(app, ["evaluate", "--model", str(micro_model_dir), "--data", "traitshapes:4", "--target", "lsc",
                              "--lsc", "wordnet", "--out", str(tmp_path / "bad")])
    assert bad.exit_code != 0 and "wordnet" in (bad.output + str(bad.exception)).lower()


@pytest.mark.parametrize(("case", "message"), [
    ("huge_target", "target 1000000000000000000000000000000 out of range for a model with 3 classes"),
    ("out_is_a_file", "is a file, not a folder"),
    ("oversized_image", "image too large: 10000×10000 = 100000000 pixels is more than the limit of 64000000"),
])
def test_explain_user_mistakes_are_one_line(tmp_path, micro_model_dir, image_files, monkeypatch, capsys, case,
                                            message) -> None:
    img, args = image_files[0], []
    if case == "huge_target":
        args = ["--target", "1000000000000000000000000000000"]
    elif case == "out_is_a_file":
        (tmp_path / "taken").write_text("mine")
        args = ["--out", str(tmp_path / "taken")]
    else:
        img = tmp_path / "bomb.png"
        img.write_bytes(png_bytes(10_000, 10_000, 1, 0, bytes(1 + 10_000 // 8) * 10_000))
    code, err = run_main(monkeypatch, capsys, "explain", str(img), "--model", str(micro_model_dir),
                         "--out", str(tmp_path / "o"), *args)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    if case == "out_is_a_file":
        assert (tmp_path / "taken").read_text() == "mine"


def test_explain_never_overwrites_an_output(tmp_path, micro_model_dir, monkeypatch, capsys) -> None:
    """Two inputs named ok.png get ok_… and ok-2_…; a second run refuses to overwrite unless --force."""
    rng = np.random.default_rng(3)
    inputs = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        inputs.append(tmp_path / folder / "ok.png")
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(inputs[-1])
    out = tmp_path / "o"
    args = ["explain", *map(str, inputs), "--model", str(micro_model_dir), "--method", "raw_attention",
            "--target", "0,0", "--out", str(out)]
    code, err = run_main(monkeypatch, capsys, *args)
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["ok-2_raw_attention_ant.png", "ok_raw_attention_ant.png", "raw_attention.npz"]
    # Each overlay is its own image's: the inputs differ, so do the overlays.
    first, second = (np.asarray(Image.open(out / n)) for n in ("ok_raw_attention_ant.png",
                                                                "ok-2_raw_attention_ant.png"))
    assert not np.array_equal(first, second)
    before = {n: (out / n).read_bytes() for n in names}
    code, err = run_main(monkeypatch, capsys, *args)
    assert code == 2 and "already exist; pass --force" in err and len(err.strip().splitlines()) == 1
    assert {n: (out / n).read_bytes() for n in names} == before
    assert sorted(p.name for p in out.iterdir()) == names  # nothing written, no temp files left
    code, err = run_main(monkeypatch, capsys, *args, "--force")
    assert code == 0, err


def test_output_stems() -> None:
    paths = [Path("a/ok.png"), Path("b/ok.png"), Path("ok-2.png"), Path("c/OK.jpg"), Path("x.png")]
    assert output_stems(paths) == ["ok", "ok-2", "ok-2-2", "OK-3", "x"]


def test_sixteen_bit_pixels_match_in_api_cli_and_server(tmp_path, micro_model_dir, monkeypatch, capsys) -> None:
    """A 16-bit grey and a 16-bit RGB PNG give the same, hand-checked 8-bit pixels on every path."""
    import traitlens as tl
    import traitlens.backbones
    from traitlens.server._images import decode_upload

    g = (np.arange(32 * 32, dtype=np.int64) * 64).reshape(32, 32)
    g[0, :4] = [255, 256, 32896, 65535]
    g = g.astype(np.uint16)
    grey, rgb = tmp_path / "grey16.png", tmp_path / "rgb16.png"
    Image.fromarray(g).save(grey)  # mode I;16
    rgb.write_bytes(png16(np.stack([g, 65535 - g, np.full_like(g, 0x1234)], -1)))
    expected = np.stack([
        np.stack([g // 256] * 3, -1),
        np.stack([g // 256, (65535 - g) // 256, np.full_like(g, 0x12)], -1),
    ]).astype(np.uint8)  # [2,32,32,3]
    np.testing.assert_array_equal(expected[0, 0, :4, 0], [0, 1, 128, 255])  # by hand: v >> 8
    np.testing.assert_array_equal(expected[1, 0, :4, 1], [255, 254, 127, 0])  # 65280 → 255, 65279 → 254

    def as_uint8(images01):
        return (images01.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)

    api = as_uint8(tl.load_images([grey, rgb], size=32))
    seen = []
    real_load_images = traitlens.backbones.load_images

    def spy(*args, **kwargs):
        seen.append(real_load_images(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(traitlens.backbones, "load_images", spy)  # the CLI imports it when it runs
    code, err = run_main(monkeypatch, capsys, "explain", str(grey), str(rgb), "--model", str(micro_model_dir),
                         "--method", "raw_attention", "--out", str(tmp_path / "o"))
    assert code == 0, err
    cli = as_uint8(seen[0])
    server = np.stack([np.asarray(decode_upload(p.read_bytes(), max_bytes=1 << 20, max_pixels=10**6))
                       for p in (grey, rgb)])
    for got in (api, cli, server):
        np.testing.assert_array_equal(got, expected)
