"""The reference recipes: every value of docs/recipes.md against the code, the options they build with, INTR's
parameter groups, prompt dropout and drop-path in train vs eval, SCOUTER's input size."""

from __future__ import annotations

import ast
import re
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import pytest
import torch
from timm.layers import DropPath

from traitlens.backbones import data_config, load_model, save_model
from traitlens.models import (
    INTR,
    SCOUTER,
    PromptCAM,
    build_interpretable,
    get_model_kind,
    recommended_fit_config,
    recommended_model_options,
)
from traitlens.train import FitConfig, optim
from traitlens.train import trainer as trainer_module

from . import SMALL_VIT, make_cnn, make_vit, one_thread  # noqa: F401  (autouse fixture)

DOC = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"
MARKER = re.compile(r"^<!-- recipe: (\w+) (.+) -->$")
SPAN = re.compile(r"(?:\b(\w+)\s+)?`([A-Za-z_][\w.]*)=([^`]+)`")
FIT_FIELDS = {f.name for f in fields(FitConfig)}


def _tables() -> list[tuple[str, list[tuple[str, tuple[str, ...]]], list[str]]]:
    """(kind, [(backbone, tags)], traitlens cells) of every `<!-- recipe: ... -->` table in docs/recipes.md."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    out = []
    for i, line in enumerate(lines):
        m = MARKER.match(line.strip())
        if not m:
            continue
        backbones = []
        for part in m.group(2).split(";"):
            name, *tags = part.split()
            backbones.append((name, tuple(tags)))
        rows = []
        for row in lines[i + 1:]:
            if not row.startswith("|"):
                break
            rows.append(row)
        cells = [r.strip().strip("|").split("|")[-1] for r in rows[2:]]  # header and rule skipped
        out.append((m.group(1), backbones, cells))
    return out


def _documented(cells: list[str], tags: tuple[str, ...], known: set[str]) -> dict[str, Any]:
    """name → value for one backbone: untagged spans, then those tagged with one of `tags` (in the marker's order)."""
    plain: dict[str, Any] = {}
    tagged: dict[str, dict[str, Any]] = {}
    for cell in cells:
        for tag, name, value in SPAN.findall(cell):
            target = tagged.setdefault(tag, {}) if tag in known else plain
            assert name not in target, f"{name} documented twice in one table"
            target[name] = ast.literal_eval(value)
    for tag in tags:
        plain.update(tagged.get(tag, {}))
    return plain


def _flat(options: dict[str, Any]) -> dict[str, Any]:
    """One level of dict options spelled out as `backbone_args.img_size` (the doc's form)."""
    out = {}
    for key, value in options.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


RECIPE_TABLES = _tables()


def test_the_doc_has_a_table_per_recipe() -> None:
    assert [kind for kind, _, _ in RECIPE_TABLES] == ["promptcam", "intr", "scouter", "linear", "finetune"]


@pytest.mark.parametrize(("kind", "backbones", "cells"), RECIPE_TABLES, ids=[t[0] for t in RECIPE_TABLES])
def test_every_recipe_value_is_documented_and_right(kind: str, backbones: list, cells: list[str]) -> None:
    known = {tag for _, tags in backbones for tag in tags}
    default = asdict(FitConfig())
    for backbone, tags in backbones:
        doc = _documented(cells, tags, known)
        cfg = asdict(recommended_fit_config(kind, "reference", pretrained=True, backbone=backbone))
        options = _flat(recommended_model_options(kind, "reference", backbone=backbone, pretrained=True))
        for name, value in doc.items():
            actual = cfg[name] if name in FIT_FIELDS else options.get(name, KeyError(name))
            assert actual == value, f"{kind} / {backbone}: docs/recipes.md says {name}={value!r}, the code {actual!r}"
        undocumented = [k for k, v in cfg.items() if v != default[k] and k not in doc]
        undocumented += [k for k in options if k not in doc]
        assert not undocumented, f"{kind} / {backbone}: set in the code, missing from docs/recipes.md: {undocumented}"


def test_variants_follow_the_backbone_and_unknown_recipes_are_named(tmp_path) -> None:
    dino, dinov2 = "vit_base_patch16_224.dino", "vit_base_patch14_dinov2.lvd142m"
    assert recommended_fit_config("promptcam", "reference", backbone=dino).lr == 5e-3
    assert recommended_fit_config("promptcam", "reference", backbone=dinov2).lr == 1e-3
    assert recommended_fit_config("promptcam", "reference", backbone=dinov2, lr=2e-3).lr == 2e-3  # overrides last
    assert recommended_model_options("promptcam", "quick") == {"drop_path": 0.0, "variant": "shallow"}
    assert recommended_model_options("scouter", "reference")["input_size"] == 260
    # A fine-tuned DINO in a traitlens folder is still a ViT: SCOUTER keeps its 224 px.
    folder = tmp_path / "fc"
    folder.mkdir()
    (folder / "config.json").write_text('{"kind": "timm", "architecture": "vit_base_patch16_224.dino"}')
    assert recommended_model_options("scouter", "reference", backbone=folder)["input_size"] is None
    assert recommended_model_options("linear", "reference", backbone=dinov2, pretrained=False) == {}
    with pytest.raises(ValueError, match="unknown recipe 'paper'"):
        recommended_fit_config("promptcam", "paper")
    with pytest.raises(ValueError, match="unknown recipe 'paper'"):
        recommended_model_options("linear", "paper")
    with pytest.raises(ValueError, match="unknown interpretable model"):
        recommended_model_options("protopnet", "reference")


def _small_options(kind: str, backbone: str) -> dict[str, Any]:
    options = recommended_model_options(kind, "reference", backbone=backbone)
    options["backbone_args"] = {**options.get("backbone_args", {}), **SMALL_VIT}
    return options


def test_the_reference_options_build_and_take_a_step() -> None:
    """Each reference's constructor options on a tiny timm ViT: they build and one reference-recipe step runs."""
    for kind, small in (("promptcam", {}), ("scouter", {"slots_per_class": 2}),
                        ("intr", {"hidden_dim": 16, "nheads": 2, "enc_layers": 1, "dec_layers": 1,
                                  "dim_feedforward": 16})):
        options = {**_small_options(kind, "vit_tiny_patch16_224.dino"), **small}
        net = build_interpretable(kind, "vit_tiny_patch16_224", 3, pretrained=False, **options)
        cfg = recommended_fit_config(kind, "reference", backbone="vit_tiny_patch16_224.dino")
        x = torch.rand(4, 3, 16, 16)
        params = trainer_module._trainable(net, cfg.mode)
        opt = optim.make_optimizer(net, params, cfg)
        net.train()
        loss, _ = net.forward_loss(x, torch.tensor([0, 1, 2, 0]))
        loss.backward()
        opt.step()
        assert torch.isfinite(loss), kind
    pcam = build_interpretable("promptcam", "vit_tiny_patch16_224", 3, pretrained=False,
                               **_small_options("promptcam", "vit_tiny_patch16_224.dino"))
    assert data_config(pcam)["mean"] == (0.5, 0.5, 0.5) == data_config(pcam)["std"]  # the reference's normalisation


def test_intr_reference_groups_train_the_backbone_at_its_own_rate() -> None:
    net = INTR(make_vit(dtype=torch.float32), 3, hidden_dim=16, nheads=2, enc_layers=1, dec_layers=1,
               dim_feedforward=16)
    cfg = recommended_fit_config("intr", "reference")
    opt = optim.make_optimizer(net, trainer_module._trainable(net, cfg.mode), cfg)
    group = {id(p): g for g in opt.param_groups for p in g["params"]}
    names = dict(net.named_parameters())
    assert set(group) == {id(p) for p in names.values() if p.requires_grad}
    for name, p in names.items():
        assert group[id(p)]["lr"] == (1e-5 if name.startswith("backbone.") else 5e-5), name
        assert group[id(p)]["weight_decay"] == 1e-6, name  # every parameter, biases and norms included
    # Without backbone_lr (the quick recipe) the backbone keeps backbone_lr_scale × lr and 1-D parameters no decay.
    quick = recommended_fit_config("intr", "quick")
    opt = optim.make_optimizer(net, trainer_module._trainable(net, quick.mode), quick)
    group = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert group[id(names["backbone.patch_embed.proj.weight"])]["lr"] == pytest.approx(0.2 * 1e-3)
    assert group[id(names["backbone.patch_embed.proj.bias"])]["weight_decay"] == 0.0


def _pcam(prompt_dropout: float, drop_path: float) -> PromptCAM:
    torch.manual_seed(0)
    return PromptCAM(make_vit(depth=3), 3, prompt_dropout=prompt_dropout, drop_path=drop_path)


def test_prompt_dropout_and_drop_path_act_in_training_only() -> None:
    noisy, clean = _pcam(0.5, 0.5), _pcam(0.0, 0.0)
    clean.load_state_dict(noisy.state_dict())
    rates = [blk.drop_path1.drop_prob if isinstance(blk.drop_path1, DropPath) else 0.0 for blk in noisy.vit.blocks]
    assert rates == pytest.approx([0.0, 0.25, 0.5])  # timm's rule: rate · i / (L − 1)
    x = torch.rand(4, 3, 16, 16, dtype=torch.float64)
    noisy.eval()
    clean.eval()
    assert torch.equal(noisy(x), clean(x))  # inert in eval: the same numbers as without them
    noisy.train()
    torch.manual_seed(1)
    a = noisy(x)
    torch.manual_seed(2)
    b = noisy(x)
    assert not torch.allclose(a, b) and not torch.allclose(a, clean(x))
    only_dropout = _pcam(0.5, 0.0).train()
    torch.manual_seed(1)
    masked = only_dropout.prompt_dropout(torch.ones(1000, dtype=torch.float64))
    assert set(masked.unique().tolist()) == {0.0, 2.0}  # inverted dropout with p = 0.5


def test_scouter_input_size_is_kept_and_checked(tmp_path) -> None:
    net = SCOUTER(make_cnn(), 3, hidden_dim=8, input_size=260, to_k_layers=3)
    assert data_config(net)["input_size"] == (3, 260, 260)
    assert sum(isinstance(m, torch.nn.Linear) for m in net.slot_attention.to_k) == 3
    assert net.forward_output(torch.rand(1, 3, 260, 260)).maps.shape[-2:] == (9, 9)  # the reference's 9 × 9 grid
    save_model(net, tmp_path / "s")
    assert data_config(load_model(tmp_path / "s"))["input_size"] == (3, 260, 260)
    assert "input_size" not in SCOUTER(make_cnn(), 3, hidden_dim=8).traitlens_config["options"]
    with pytest.raises(ValueError, match="takes 16x16 images only"):
        SCOUTER(make_vit(), 3, hidden_dim=8, input_size=260)


def test_notes_state_what_is_not_reproduced() -> None:
    for kind in ("promptcam", "intr", "scouter"):
        assert any("drop_last" in note for note in get_model_kind(kind).notes), kind
