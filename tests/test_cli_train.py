"""`traitlens train` on real-data layouts (issue 16, items 1-4 and 6): tiny CUB and ImageFolder trees, 1-2 epochs.

Every run is in-process through `main()` (exit codes and the one-line errors as a user sees them); the hub is never
contacted (`fake_hub`).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.backbones.hubtools import fake_hub
from tests.data.test_splits import BIRDS, write_cub, write_image_folder
from traitlens.backbones import create_preset, load_model, save_model
from traitlens.cli import main
from traitlens.data import CUBDataset, Resize, SubsetDataset, open_splits
from traitlens.models.build import build_classifier
from traitlens.quickstart import QUICK_MODEL_OPTIONS
from traitlens.train import dataset_fingerprint, evaluate_accuracy, load_checkpoint

NAMES = ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross"]


def run(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `traitlens ARGS`."""
    monkeypatch.setattr(sys, "argv", ["traitlens", *args])
    with pytest.raises(SystemExit) as stop:
        main()
    captured = capsys.readouterr()
    return int(stop.value.code or 0), captured.out, captured.err


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def cub(tmp_path_factory) -> Path:
    """CUB layout, 3 classes × (6 train + 2 test) images."""
    return write_cub(tmp_path_factory.mktemp("cub"), BIRDS, 6, 2)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    """A saved model folder: a backbone with (here untrained, but saved) weights, not a random build."""
    path = tmp_path_factory.mktemp("backbone") / "vit"
    save_model(create_preset("traitlens-vit-micro", 4), path)
    return path


FAST = ("--epochs", "1", "--batch-size", "8", "--no-amp")


def test_cub_selects_on_validation_carved_from_train_and_tests_once(cub, tmp_path, monkeypatch, capsys) -> None:
    """Item 1: CUB has train/test only; validation is a stratified 1/3 of train, test is scored once at the end."""
    out = tmp_path / "run"
    code, stdout, err = run(monkeypatch, capsys, "train", "finetune", "--data", str(cub), "--model",
                            "traitlens-vit-micro", "--out", str(out), "--epochs", "2", "--batch-size", "8",
                            "--no-amp", "--val-fraction", "0.34", "--split-seed", "3")
    assert code == 0, err
    doc = json.loads((out / "metrics.json").read_text())
    val = doc["data"]["validation"]
    assert (val["source"], val["fraction"], val["seed"], val["images"]) == ("carved from train", 0.34, 3, 6)
    cub_train = CUBDataset(cub, "train", with_masks=False)
    cub_test = CUBDataset(cub, "test", transform=Resize((32, 32)), with_masks=False)
    assert set(val["files"]) <= set(cub_train.files) and not set(val["files"]) & set(cub_test.files)
    assert Counter(f.split("/")[0] for f in val["files"]) == dict.fromkeys(BIRDS, 2)  # ⌊0.34·6 + ½⌋ per class
    assert (doc["data"]["train_images"], doc["data"]["test_images"]) == (12, 6)
    # What the trainer validated on is the carved split, never the test split.
    state = load_checkpoint(out / "checkpoint.pt")
    carved = open_splits(cub, (32, 32), 0.34, 3)
    assert state["data"]["val"] == dataset_fingerprint(carved.val) != dataset_fingerprint(cub_test)
    assert isinstance(carved.val, SubsetDataset) and carved.val.files == val["files"]
    # The selected epoch is the best on validation; the test accuracy is that checkpoint's, measured once.
    accs = [row["val_acc"] for row in doc["epochs"]]
    assert doc["selected"]["epoch"] == 1 + accs.index(max(accs)) and doc["selected"]["val_acc"] == max(accs)
    test_acc = evaluate_accuracy(load_model(out / "best"), cub_test)
    assert doc["test"] == {"images": 6, "accuracy": test_acc}
    assert "test" not in {k for row in doc["epochs"] for k in row if "test" in k}  # no per-epoch test score
    assert last_line(stdout) == (f"selected epoch {doc['selected']['epoch']}, val accuracy {max(accs):.3f}, test "
                                 f"accuracy {test_acc:.3f} (6 images, scored once); model in {out / 'best'}")


def test_image_folder_validates_on_val_and_names_classes_as_cub(cub, backbone, tmp_path, monkeypatch,
                                                                 capsys) -> None:
    """Items 1 and 4: train/ + val/ + test/ validates on val/; the class names are the CUB loader's."""
    tree = write_image_folder(tmp_path / "if", BIRDS, {"train": 4, "val": 2, "test": 1})
    out = tmp_path / "run"
    code, stdout, err = run(monkeypatch, capsys, "train", "linear", "--data", str(tree), "--model", str(backbone),
                            "--out", str(out), *FAST)
    assert code == 0, err
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["data"]["validation"]["source"] == "val/ folder"
    assert sorted(doc["data"]["validation"]["files"]) == sorted(f"{b}/{k}.png" for b in BIRDS for k in range(2))
    assert doc["test"]["images"] == 3 and "test accuracy" in last_line(stdout)
    net = load_model(out / "best")
    assert net.class_names == NAMES == CUBDataset(cub, with_masks=False).classes
    assert net.head.out_features == 3


def test_frozen_random_backbones_are_refused_and_hub_names_fail_fast(cub, tmp_path, monkeypatch, capsys,
                                                                    caplog) -> None:
    """Item 2: pretrained is the default; linear / Prompt-CAM on random weights need --allow-random-backbone."""
    fake_hub(monkeypatch, reachable=False, cache=tmp_path / "hub")
    for mode, flag in (("linear", "--model"), ("promptcam", "--backbone")):
        code, _, err = run(monkeypatch, capsys, "train", mode, "--data", str(cub), flag, "traitlens-vit-micro",
                           "--out", str(tmp_path / mode), *FAST)
        assert code == 2 and "Traceback" not in err
        assert last_line(err).startswith(f"error: {mode} would train on a frozen backbone with random weights "
                                         "('traitlens-vit-micro' is built without trained weights)")
        assert "--allow-random-backbone" in last_line(err) and not (tmp_path / mode / "best").exists()
    code, _, err = run(monkeypatch, capsys, "train", "linear", "--data", str(cub), "--model", "test_vit",
                       "--no-pretrained", "--out", str(tmp_path / "t"), *FAST)
    assert code == 2 and "frozen backbone with random weights ('test_vit'" in last_line(err)
    # The default is --pretrained: a hub name offline fails at once, saying what to do.
    code, _, err = run(monkeypatch, capsys, "train", "linear", "--data", str(cub), "--model", "test_vit.r160_in1k",
                       "--out", str(tmp_path / "hub_run"), *FAST)
    assert code == 2
    assert last_line(err).startswith("error: cannot load pretrained weights for 'test_vit.r160_in1k': "
                                     "huggingface.co:443 cannot be reached")
    assert "HF_HUB_OFFLINE=1" in last_line(err) and "local model folder" in last_line(err)
    code, _, err = run(monkeypatch, capsys, "train", "linear", "--data", str(cub), "--model", "traitlens-vit-micro",
                       "--allow-random-backbone", "--out", str(tmp_path / "ok"), *FAST)
    assert code == 0, err
    assert "as --allow-random-backbone asks" in caplog.text and (tmp_path / "ok" / "best").is_dir()


def test_a_run_folder_is_never_overwritten_by_accident(cub, tmp_path, monkeypatch, capsys) -> None:
    """Item 3: a rerun refuses; --overwrite replaces the run (only its files); --resume continues as before."""
    out = tmp_path / "run"
    args = ["train", "finetune", "--data", str(cub), "--model", "traitlens-vit-micro", "--out", str(out),
            "--batch-size", "8", "--no-amp"]
    assert run(monkeypatch, capsys, *args, "--epochs", "1")[0] == 0
    before = {name: (out / name).read_bytes() for name in ("metrics.json", "checkpoint.pt", "best/model.safetensors")}
    code, _, err = run(monkeypatch, capsys, *args, "--epochs", "1")
    assert code == 2
    assert last_line(err) == (f"error: {out} already holds a run (checkpoint.pt, metrics.json, metrics.csv, best); "
                              "pass --overwrite to replace it, --resume to continue it, or another --out")
    assert {name: (out / name).read_bytes() for name in before} == before
    code, _, err = run(monkeypatch, capsys, *args, "--epochs", "1", "--overwrite", "--model-arg", "depht=3")
    assert code == 2 and "unexpected keyword argument 'depht'" in last_line(err)
    assert {name: (out / name).read_bytes() for name in before} == before  # a run that cannot start deletes nothing
    (out / "epoch_10").mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = run(monkeypatch, capsys, *args, "--epochs", "1", "--overwrite", "--seed", "1")
    assert code == 0, err
    assert not (out / "epoch_10").exists() and (out / "notes.txt").read_text() == "mine"
    assert load_checkpoint(out / "checkpoint.pt")["config"]["seed"] == 1
    checkpoint = (out / "checkpoint.pt").read_bytes()
    code, _, err = run(monkeypatch, capsys, *args, "--epochs", "1", "--resume", "--seed", "1")
    assert code == 0, err  # a finished run resumed: nothing left to train, the same checkpoint tested again
    doc = json.loads((out / "metrics.json").read_text())
    assert [row["epoch"] for row in doc["epochs"]] == [1] and doc["test"]["images"] == 6
    assert (out / "checkpoint.pt").read_bytes() == checkpoint
    code, _, err = run(monkeypatch, capsys, *args, "--epochs", "1", "--resume", "--seed", "2")
    assert code == 2 and "was written by another run (seed 1 -> 2)" in last_line(err)
    code, _, err = run(monkeypatch, capsys, *args, "--resume", "--overwrite")
    assert code == 2 and last_line(err) == "error: --overwrite starts the run again and --resume continues it: " \
                                           "choose one"


def test_a_saved_model_with_another_class_count_gets_a_new_head(cub, tmp_path, monkeypatch, capsys,
                                                                 caplog) -> None:
    """Item 4: fine-tune your own 8-class model on a 3-class folder (was "saved with num_classes=8, not 3")."""
    own = tmp_path / "own8"
    save_model(create_preset("traitlens-vit-micro", 8, class_names=list("abcdefgh")), own)
    with caplog.at_level("INFO", logger="traitlens"):
        code, _, err = run(monkeypatch, capsys, "train", "finetune", "--data", str(cub), "--model", str(own),
                           "--out", str(tmp_path / "run"), *FAST)
    assert code == 0, err
    assert f"{own} was saved with 8 classes: it gets a new 3-class head (head)" in caplog.text
    net = load_model(tmp_path / "run" / "best")
    assert net.head.out_features == 3 and net.class_names == NAMES


def test_model_options_workers_and_image_size_from_the_cli(cub, backbone, tmp_path, monkeypatch, capsys) -> None:
    """Item 6: --model-arg / --model-config reach the constructor, over the quick recipe's options."""
    config = tmp_path / "intr.json"
    config.write_text(json.dumps({"nheads": 2, "dec_layers": 3}))
    out = tmp_path / "intr"
    code, _, err = run(monkeypatch, capsys, "train", "intr", "--data", str(cub), "--backbone", str(backbone),
                       "--model-config", str(config), "--model-arg", "hidden_dim=32", "--model-arg", "dec_layers=1",
                       "--model-arg", "dropout=0.0", "--workers", "1", "--out", str(out), *FAST)
    assert code == 0, err
    options = json.loads((out / "best" / "config.json").read_text())["options"]
    quick = QUICK_MODEL_OPTIONS["intr"]
    assert (options["hidden_dim"], options["nheads"], options["dec_layers"], options["dropout"]) == (32, 2, 1, 0.0)
    assert options["enc_layers"] == quick["enc_layers"] and options["dim_feedforward"] == quick["dim_feedforward"]
    assert load_checkpoint(out / "checkpoint.pt")["config"]["num_workers"] == 1
    code, _, err = run(monkeypatch, capsys, "train", "intr", "--data", str(cub), "--backbone", str(backbone),
                       "--model-arg", "hidden_dims=32", "--out", str(tmp_path / "bad"), *FAST)
    assert code == 2 and last_line(err).startswith("error: unknown intr option hidden_dims; INTR takes hidden_dim, "
                                                   "nheads, enc_layers, dec_layers")
    code, _, err = run(monkeypatch, capsys, "train", "intr", "--data", str(cub), "--backbone", str(backbone),
                       "--model-arg", "hidden_dim", "--out", str(tmp_path / "bad"), *FAST)
    assert code == 2 and "bad model option 'hidden_dim': expected KEY=VALUE" in last_line(err)
    # --img-size: a preset built at 16 px; a Prompt-CAM backbone folder rebuilt at 48 px.
    code, _, err = run(monkeypatch, capsys, "train", "finetune", "--data", str(cub), "--model", "traitlens-vit-micro",
                       "--img-size", "16", "--out", str(tmp_path / "small"), *FAST)
    assert code == 0, err
    assert load_model(tmp_path / "small" / "best").patch_embed.img_size == (16, 16)
    code, _, err = run(monkeypatch, capsys, "train", "promptcam", "--data", str(cub), "--backbone", str(backbone),
                       "--img-size", "48", "--out", str(tmp_path / "big"), *FAST)
    assert code == 0, err
    big = load_model(tmp_path / "big" / "best")
    assert big.backbone.patch_embed.img_size == (48, 48) and big.pretrained_cfg["input_size"] == (3, 48, 48)


def test_the_quick_recipe_builds_the_quickstarts_models(backbone) -> None:
    """`traitlens train intr|scouter` (recipe quick, the default) builds the quickstart's small models; 'reference'
    the paper's sizes."""
    for kind in ("intr", "scouter", "promptcam"):
        net = build_classifier(kind, str(backbone), 3, NAMES)
        options = net.traitlens_config["options"]
        assert {k: options[k] for k in QUICK_MODEL_OPTIONS[kind] if k in options} == {
            k: v for k, v in QUICK_MODEL_OPTIONS[kind].items() if k in options}
    paper = build_classifier("intr", str(backbone), 3, NAMES, recipe="reference", options={"enc_layers": 1,
                                                                                            "dec_layers": 1})
    assert paper.traitlens_config["options"]["hidden_dim"] == 256 and paper.traitlens_config["options"]["nheads"] == 8
    with pytest.raises(ValueError, match="set pretrained with --pretrained"):
        build_classifier("scouter", str(backbone), 3, options={"pretrained": False})


def test_published_weights_get_the_pretrained_recipe_offline_from_the_cache(cub, tmp_path, monkeypatch,
                                                                           capsys) -> None:
    """A hub name with (cached) published weights: the pretrained linear recipe (docs/recipes.md), its crops, and
    the test split preprocessed as validation is."""
    import timm
    import torch

    from tests.backbones.test_hub import _cache_weights
    from traitlens.train import eval_transform
    from traitlens.train.recipes import LINEAR_PRETRAINED

    fake_hub(monkeypatch, reachable=False, cache=tmp_path / "hub")
    torch.manual_seed(0)
    _cache_weights(tmp_path / "hub", "timm/test_vit.r160_in1k", timm.create_model("test_vit").state_dict())
    out = tmp_path / "run"
    code, _, err = run(monkeypatch, capsys, "train", "linear", "--data", str(cub), "--model", "test_vit.r160_in1k",
                       "--out", str(out), *FAST)
    assert code == 0, err
    cfg = load_checkpoint(out / "checkpoint.pt")["config"]
    for key in ("optimizer", "lr", "weight_decay", "schedule", "augment_crop", "eval_crop", "epochs"):
        assert cfg[key] == (1 if key == "epochs" else getattr(LINEAR_PRETRAINED, key)), key  # --epochs 1
    net = load_model(out / "best")
    test = CUBDataset(cub, "test", transform=Resize((183, 183)), with_masks=False)  # 160 / 0.875, then cropped
    acc = evaluate_accuracy(net, test, transform=eval_transform(net, LINEAR_PRETRAINED))
    assert json.loads((out / "metrics.json").read_text())["test"] == {"images": 6, "accuracy": acc}


def test_augmentation_flags_override_the_recipe_only_when_given(cub, backbone, tmp_path, monkeypatch,
                                                                capsys) -> None:
    """Item 6: the reference recipe keeps its flips unless --no-augment-flip; --augment-crop turns crops on."""
    from traitlens.models import recommended_fit_config

    reference = recommended_fit_config("promptcam", "reference")
    assert reference.augment_flip and reference.augment_crop  # the paper's Resize -> RandomCrop -> flip
    out = tmp_path / "ref"
    code, _, err = run(monkeypatch, capsys, "train", "promptcam", "--data", str(cub), "--backbone", str(backbone),
                       "--recipe", "reference", "--out", str(out), *FAST)
    assert code == 0, err
    config = load_checkpoint(out / "checkpoint.pt")["config"]
    assert (config["augment_flip"], config["augment_crop"], config["amp"]) == (True, True, False)
    out = tmp_path / "quick"
    code, _, err = run(monkeypatch, capsys, "train", "promptcam", "--data", str(cub), "--backbone", str(backbone),
                       "--augment-crop", "--no-augment-flip", "--augment-shift", "2", "--out", str(out), *FAST)
    assert code == 0, err
    config = load_checkpoint(out / "checkpoint.pt")["config"]
    assert (config["augment_flip"], config["augment_crop"], config["augment_shift"]) == (False, True, 2)
