"""Recipe machinery of the trainer: schedules by hand, parameter groups, resize-then-crop, old checkpoints, classifier
recipes for pretrained backbones (docs/recipes.md)."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.functional as TF

from traitlens.backbones import create_preset
from traitlens.train import (
    FitConfig,
    classifier_fit_config,
    eval_transform,
    fit,
    load_checkpoint,
    optim,
    save_checkpoint,
)
from traitlens.train import trainer as trainer_module
from traitlens.train.augment import crop_resize_size, resize_and_crop
from traitlens.train.recipes import FINETUNE_PRETRAINED, LINEAR_PRETRAINED

from .test_trainer import ArraySet, _model


def _lrs(cfg: FitConfig, steps_per_epoch: int, bases: tuple[float, ...] = (1.0,)) -> list[list[float]]:
    """The lr of each group during every optimizer step of a run, read from the scheduler `fit` builds."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": b} for b in bases]
    opt = torch.optim.SGD(groups, lr=bases[0])
    sched = optim.make_scheduler(opt, cfg, steps_per_epoch)
    out = []
    for _ in range(cfg.epochs * steps_per_epoch):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


def test_steplr_is_torch_steplr_per_epoch() -> None:
    cfg = FitConfig(epochs=5, schedule="steplr", step_size=2, gamma=0.1)
    lrs = [g[0] for g in _lrs(cfg, steps_per_epoch=3)]
    by_hand = [1.0] * 6 + [0.1] * 6 + [0.01] * 3  # epochs 0-1, 2-3, 4
    assert lrs == pytest.approx(by_hand, rel=1e-12)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    torch_steplr = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    per_epoch = []
    for _ in range(5):
        per_epoch.append(opt.param_groups[0]["lr"])
        opt.step()
        torch_steplr.step()
    assert lrs[::3] == pytest.approx(per_epoch, rel=1e-12)
    intr = FitConfig(epochs=140, schedule="steplr", step_size=80, gamma=0.1)  # INTR: ×0.1 after epoch 80
    assert optim.schedule_lr(intr, 5e-5, step=80 * 10 - 1, steps_per_epoch=10) == 5e-5
    assert optim.schedule_lr(intr, 5e-5, step=80 * 10, steps_per_epoch=10) == pytest.approx(5e-6)


def test_cosine_per_epoch_is_timms_cosine_scheduler() -> None:
    from timm.scheduler.cosine_lr import CosineLRScheduler

    cfg = FitConfig(epochs=6, schedule="cosine", schedule_per="epoch", warmup_epochs=2, warmup_lr=0.0, min_lr=0.1)
    lrs = [g[0] for g in _lrs(cfg, steps_per_epoch=2)]
    # e = 0, 1: warm-up 0 → 1 in 2 epochs; e ≥ 2: 0.1 + 0.45·(1 + cos(π·e/6)).
    by_hand = [0.0, 0.5, 0.1 + 0.45 * 1.5, 0.1 + 0.45, 0.1 + 0.45 * 0.5, 0.1 + 0.45 * (1 + math.cos(5 * math.pi / 6))]
    assert lrs == pytest.approx([v for v in by_hand for _ in range(2)], abs=1e-12)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    timm_sched = CosineLRScheduler(opt, t_initial=6, warmup_t=2, lr_min=0.1, warmup_lr_init=0.0)
    assert lrs[::2] == pytest.approx([timm_sched._get_lr(e)[0] for e in range(6)], abs=1e-12)


def test_cosine_per_batch_default_is_unchanged_and_floors_are_absolute_per_group() -> None:
    cfg = FitConfig(epochs=2, schedule="cosine", warmup_epochs=1)  # no warmup_lr / min_lr: the formula of old
    lrs = [g[0] for g in _lrs(cfg, steps_per_epoch=4)]
    old = [(t + 1) / 4 for t in range(4)] + [0.5 * (1 + math.cos(math.pi * (t - 4) / 4)) for t in range(4, 8)]
    assert lrs == old  # bit for bit
    floors = _lrs(FitConfig(epochs=2, schedule="cosine", min_lr=0.1), steps_per_epoch=2, bases=(1.0, 0.5))
    # t = 2 of 4 steps: cos(π/2) = 0 → halfway between each group's base and the shared floor 0.1.
    assert floors[2] == pytest.approx([0.55, 0.3], abs=1e-12)
    assert floors[0] == pytest.approx([1.0, 0.5], abs=1e-12)


def test_bad_schedule_settings_are_named() -> None:
    with pytest.raises(ValueError, match="steplr' needs step_size >= 1"):
        fit(_model(), ArraySet(), None, FitConfig(schedule="steplr"), progress=False)
    with pytest.raises(ValueError, match="unknown schedule_per 'step'"):
        fit(_model(), ArraySet(), None, FitConfig(schedule="cosine", schedule_per="step"), progress=False)
    with pytest.raises(ValueError, match="onecycle' steps per batch"):
        fit(_model(), ArraySet(), None, FitConfig(schedule_per="epoch"), progress=False)
    with pytest.raises(ValueError, match="crop_resize must be >= 0"):
        fit(_model(), ArraySet(), None, FitConfig(crop_resize=-1), progress=False)


def _group_of(opt: torch.optim.Optimizer) -> dict[int, dict]:
    return {id(p): g for g in opt.param_groups for p in g["params"]}


def test_backbone_lr_splits_a_timm_classifier_at_its_head() -> None:
    model = _model()
    cfg = FitConfig(mode="finetune", lr=1e-3, backbone_lr=1e-5, weight_decay=0.05)
    opt = optim.make_optimizer(model, trainer_module._trainable(model, "finetune"), cfg)
    group = _group_of(opt)
    for name, p in model.named_parameters():
        assert group[id(p)]["lr"] == (1e-3 if name.startswith("head.") else 1e-5), name
        assert group[id(p)]["weight_decay"] == (0.05 if p.ndim > 1 else 0.0), name
    everything = FitConfig(mode="finetune", lr=1e-3, weight_decay=0.05, weight_decay_all=True)
    opt = optim.make_optimizer(model, list(model.parameters()), everything)
    assert {g["weight_decay"] for g in opt.param_groups} == {0.05}
    assert all(g["lr"] == 1e-3 for g in opt.param_groups)
    with pytest.raises(ValueError, match="backbone_lr needs a model with a `backbone`"):
        optim.make_optimizer(torch.nn.Linear(2, 2), [], FitConfig(backbone_lr=1e-5))


def test_crop_sizes() -> None:
    assert crop_resize_size((224, 224)) == (256, 256)
    assert crop_resize_size((800, 800)) == (914, 914)  # 800 / 0.875 = 914.3
    assert crop_resize_size((224, 224), 240) == (240, 240)  # Prompt-CAM: Resize(240) → RandomCrop(224)
    assert crop_resize_size((224, 320), 240) == (240, 343)  # the shorter side to 240, aspect kept
    with pytest.raises(ValueError, match="smaller than the crop"):
        crop_resize_size((224, 224), 200)


def test_random_crop_takes_a_known_window_per_image_and_centre_crop_matches_torchvision() -> None:
    x = torch.arange(4 * 1 * 10 * 10, dtype=torch.float32).view(4, 1, 10, 10)
    out = resize_and_crop(x, (6, 6), (10, 10), torch.Generator().manual_seed(0))
    assert out.shape == (4, 1, 6, 6)
    corners = []
    for b in range(4):
        top_left = int(out[b, 0, 0, 0]) - b * 100
        dy, dx = divmod(top_left, 10)
        assert torch.equal(out[b], x[b, :, dy:dy + 6, dx:dx + 6])  # a window of the image, not a resampling
        corners.append((dy, dx))
    # The offsets of seed 0: torch.randint(0, 5, (4,)) for the rows, then for the columns.
    g = torch.Generator().manual_seed(0)
    rows, cols = torch.randint(0, 5, (4,), generator=g), torch.randint(0, 5, (4,), generator=g)
    assert corners == list(zip(rows.tolist(), cols.tolist(), strict=True))
    assert len(set(corners)) > 1  # drawn per image
    for size in (6, 5):  # even and odd margins
        assert torch.equal(resize_and_crop(x, (size, size), (10, 10)), TF.center_crop(x, [size, size]))
    small = torch.rand(2, 3, 8, 8)
    resized = resize_and_crop(small, (8, 8), (10, 10))  # upsampled to 10, centre 8
    expected = torch.nn.functional.interpolate(small, size=(10, 10), mode="bilinear", antialias=True)
    assert torch.allclose(resized, expected[:, :, 1:9, 1:9])


def test_augment_crop_feeds_the_input_size_from_larger_images_and_eval_crops_the_centre(tmp_path) -> None:
    big = ArraySet(n=32, size=36)  # the micro ViT takes 32 px only
    with pytest.raises((AssertionError, RuntimeError)):  # timm's fixed-size check
        fit(_model(), big, None, FitConfig(epochs=1, batch_size=16, amp=False), progress=False)
    cfg = FitConfig(epochs=1, batch_size=16, amp=False, augment_crop=True, crop_resize=36, eval_crop=True)
    model = _model()
    res = fit(model, big, big, cfg, out=tmp_path, progress=False)
    assert 0.0 <= res.history[0]["val_acc"] <= 1.0
    centre = eval_transform(model, cfg)
    assert centre is not None and torch.equal(centre(big.images[:2]), big.images[:2, :, 2:34, 2:34])
    assert eval_transform(model, FitConfig()) is None


def test_a_checkpoint_written_before_the_new_settings_resumes(tmp_path) -> None:
    cfg = FitConfig(epochs=2, batch_size=16, lr=1e-3, seed=3, amp=False)

    def stop(epoch: int, _metrics: dict) -> None:
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(_model(), ArraySet(), None, cfg, out=tmp_path, progress=False, on_epoch_end=stop)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    new_keys = ("weight_decay_all", "backbone_lr", "schedule_per", "warmup_lr", "min_lr", "step_size", "gamma",
                "augment_crop", "crop_resize", "eval_crop")
    state["config"] = {k: v for k, v in state["config"].items() if k not in new_keys}
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    res = fit(_model(), ArraySet(), None, cfg, out=tmp_path, resume=True, progress=False)
    assert [row["epoch"] for row in res.history] == [1, 2]


def test_classifier_recipes_depend_on_pretrained() -> None:
    assert classifier_fit_config("linear", pretrained=False) == FitConfig(mode="linear")
    assert classifier_fit_config("finetune", pretrained=False) == FitConfig(mode="finetune")
    linear = classifier_fit_config("linear", pretrained=True)
    assert linear == LINEAR_PRETRAINED and linear is not LINEAR_PRETRAINED
    # DINO eval_linear.py: SGD 0.9, lr 0.001 · 256/256, no weight decay, cosine to 0 per epoch, 100 epochs.
    assert (linear.optimizer, linear.lr, linear.batch_size, linear.weight_decay) == ("sgd", 1e-3, 256, 0.0)
    assert (linear.schedule, linear.schedule_per, linear.min_lr, linear.epochs) == ("cosine", "epoch", 0.0, 100)
    finetune = classifier_fit_config("finetune", pretrained=True)
    assert finetune == FINETUNE_PRETRAINED and 1e-5 <= finetune.backbone_lr <= 1e-4 < finetune.lr
    with pytest.raises(ValueError, match="unknown classifier mode 'model'"):
        classifier_fit_config("model", pretrained=True)


def test_the_linear_recipe_only_moves_the_head_at_its_rate() -> None:
    model = create_preset("traitlens-vit-micro", 3)
    cfg = classifier_fit_config("linear", pretrained=True)
    opt = optim.make_optimizer(model, trainer_module._trainable(model, cfg.mode), cfg)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(model.head.weight), id(model.head.bias)}
    assert {g["lr"] for g in opt.param_groups} == {1e-3}
