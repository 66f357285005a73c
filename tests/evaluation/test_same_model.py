"""The same-model table: hand-computed pointing / energy values and chance levels on a model whose native maps are
known, deletion / insertion against direct metric calls, refusals in `skipped`, and a tiny Prompt-CAM end to end."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from traitlens.evaluation.same_model import COLUMNS, same_model_rows, same_model_table
from traitlens.explain import explain, method_refusal
from traitlens.metrics import deletion, insertion
from traitlens.models import InterpretableModel, ModelOutput, PromptCAM

H = W = 8


def rect(r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
    """Bool [8,8] mask of rows r0..r1 and columns c0..c1 (inclusive)."""
    m = torch.zeros(H, W, dtype=torch.bool)
    m[r0:r1 + 1, c0:c1 + 1] = True
    return m


# Native map of each class (head mean): the indicator of A_c. Argmax (first, row-major): A0 (0,0), A1 (2,2), A2 (5,4).
REGIONS = [rect(0, 1, 0, 3), rect(2, 3, 2, 3), rect(5, 6, 4, 7)]


class KnownMaps(InterpretableModel):
    """3 classes; logits = per-channel image means (class = brightest channel); native maps fixed per class on an
    8×8 grid (so upsampling to the 8×8 image is the identity): head 0 = 2·1_{A_c}, head 1 = 0, head mean = 1_{A_c}."""

    def __init__(self) -> None:
        super().__init__()
        self.num_classes = 3
        self.pretrained_cfg = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "input_size": (3, H, W)}
        self.scale = nn.Parameter(torch.ones(()))
        heads = torch.zeros(3, 2, H, W)
        for c, region in enumerate(REGIONS):
            heads[c, 0] = 2.0 * region.float()
        self.register_buffer("heads", heads)

    def forward_output(self, images: torch.Tensor, return_maps: bool | None = None) -> ModelOutput:
        logits = images.mean((2, 3)) * self.scale * 10
        maps = self.heads.expand(images.shape[0], -1, -1, -1, -1) if return_maps is not False else None
        return ModelOutput(logits, maps)


class HandTraits(torch.utils.data.Dataset):
    """4 images with hand-drawn trait masks; classes [[0,0],[1,0],[0,1]] over slots (head_colour, wing_pattern):
    class 0's siblings are 1 (slot 0) and 2 (slot 1), class 1's is 0 (slot 0), class 2's is 0 (slot 1); the class
    mask is the union of both slots. Image 3 (label 0) is brightest in channel 1, so it is misclassified."""

    def __init__(self) -> None:
        self.classes = ["c0", "c1", "c2"]
        self.trait_table = SimpleNamespace(slots=("head_colour", "wing_pattern"),
                                           slot_parts={"head_colour": "head", "wing_pattern": "wing"},
                                           class_traits=[[0, 0], [1, 0], [0, 1]])
        # (label, brightest channel, slot-0 mask, slot-1 mask)
        self.items = [(0, 0, rect(0, 1, 0, 1), rect(4, 5, 4, 7)),
                      (1, 1, rect(2, 3, 2, 3), rect(6, 7, 0, 1)),
                      (2, 2, rect(0, 0, 4, 7), rect(5, 6, 5, 6)),
                      (0, 1, rect(6, 7, 6, 7), rect(0, 1, 3, 4))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        label, bright, m0, m1 = self.items[i]
        g = torch.Generator().manual_seed(i)
        image = 0.1 + 0.2 * torch.rand(3, H, W, generator=g)
        image[bright] += 0.5
        return {"image": image, "label": label, "trait_masks": torch.stack([m0, m1])}


@pytest.fixture(scope="module")
def hand_table():
    torch.manual_seed(0)
    net = KnownMaps().eval()
    table = same_model_table(net, HandTraits(), methods=["input_x_gradient", "cdam", "rollout"], n_images=4,
                             top_k=1, tol=2, steps=4, n_boot=200, batch_size=3,
                             method_options={"input_x_gradient": {"patch_size": 4}})
    return net, table


def test_native_scores_equal_the_hand_values(hand_table) -> None:
    _, table = hand_table
    native = table.row("native")
    assert native.kind == "native"
    # tol 2 dilates by the 3×3 neighbourhood. Trait samples (image, sibling) → hit, energy |A∩M|/|A|:
    # img0: (1,0.5) (0,0); img1: (1,1); img2: (1, 0.5) — a tolerance hit at (5,4); img3: (0,0) (0,0.25).
    # pointing, macro over classes: class 0 1/4, class 1 1, class 2 1 → 0.75; energy mean 2.25/6.
    assert native.values["trait_pg"].value == pytest.approx(0.75)
    assert native.values["trait_energy"].value == pytest.approx(2.25 / 6)
    assert native.values["trait_energy"].n == 6
    # Class masks (union of both slots): hits 1,1,1,0 → macro (1/2 + 1 + 1)/3; energy (0.5 + 1 + 0.5 + 0.25)/4.
    assert native.values["class_pg"].value == pytest.approx(2.5 / 3)
    assert native.values["class_energy"].value == pytest.approx(2.25 / 4)
    assert table.accuracy.value == pytest.approx(0.75)
    assert table.n_images == 4


def test_chance_levels_equal_the_hand_values(hand_table) -> None:
    _, table = hand_table
    chance = table.chance.values
    # energy: mask area / 64 per sample; pointing: tol-dilated area / 64, macro over classes.
    assert chance["trait_energy"].value == pytest.approx((4 + 8 + 4 + 4 + 4 + 4) / 6 / 64)
    assert chance["trait_pg"].value == pytest.approx(((9 + 20 + 9 + 12) / 4 + 16 + 16) / 3 / 64)
    assert chance["class_energy"].value == pytest.approx((12 + 8 + 8 + 8) / 4 / 64)
    assert chance["class_pg"].value == pytest.approx(((29 + 21) / 2 + 25 + 26) / 3 / 64)


def test_faithfulness_columns_equal_direct_metric_calls(hand_table) -> None:
    net, table = hand_table
    data = HandTraits()
    x = torch.stack([data[i]["image"] for i in range(4)])
    labels = torch.tensor([data[i]["label"] for i in range(4)])
    exp = explain(net, x, method="native", target=labels)
    native = table.row("native").values
    assert native["deletion"].value == pytest.approx(deletion(net, x, exp, steps=4).value)
    assert native["insertion"].value == pytest.approx(insertion(net, x, exp, steps=4).value)
    # chance: a constant map removed in a seeded random order (tie_break='random', seed 0, per dataset index)
    flat = torch.zeros(4, 1, H, W)
    kw = {"steps": 4, "tie_break": "random", "seed": 0, "indices": torch.arange(4), "target": labels[:, None]}
    d, i = deletion(net, x, flat, **kw).value, insertion(net, x, flat, **kw).value
    assert table.chance.values["deletion"].value == pytest.approx(d)
    assert table.chance.values["insertion"].value == pytest.approx(i)
    assert table.chance.values["ins_minus_del"].value == pytest.approx(i - d)
    # a different seed is a different random order, so a different chance estimate
    other = deletion(net, x, flat, **{**kw, "seed": 1}).value
    assert other != pytest.approx(d, abs=1e-9)


def test_every_ci_contains_its_mean(hand_table) -> None:
    _, table = hand_table
    for row in [*table.rows, table.chance]:
        for col, e in row.values.items():
            if not math.isnan(e.ci_low):
                assert e.ci_low - 1e-12 <= e.value <= e.ci_high + 1e-12, (row.method, col)
    assert table.accuracy.ci_low <= 0.75 <= table.accuracy.ci_high


def test_refused_methods_land_in_skipped_with_their_reason(hand_table) -> None:
    _, table = hand_table
    methods = [r.method for r in table.rows]
    assert methods == ["native", "input_x_gradient"]  # the post-hoc method that runs here, with its patch option
    assert table.row("input_x_gradient").kind == "post-hoc"
    # the registry's up-front refusal, as explain() raises it
    assert table.skipped["cdam"] == method_refusal(KnownMaps(), "cdam")
    assert "rollout" in table.skipped
    assert "Prompt-CAM only" in table.skipped["native_top1"]  # top-k ranking is Prompt-CAM's
    assert "cdam" in table.summary()


def test_rows_render_for_the_report_and_json(hand_table) -> None:
    _, table = hand_table
    header, body = same_model_rows(table)
    assert header[:2] == ["method", "map"] and len(header) == len(COLUMNS) + 3
    assert [r[0] for r in body] == ["native", "input_x_gradient", "chance"]
    assert body[0][header.index("trait_pg ↑")] == table.row("native").values["trait_pg"].text()
    assert body[0][header.index("trait_pg ↑")].startswith("0.750 [")
    data = json.loads(json.dumps(table.to_dict(), allow_nan=False))
    assert data["rows"][0]["values"]["trait_energy"]["value"] == pytest.approx(2.25 / 6)
    assert data["accuracy"]["value"] == pytest.approx(0.75)
    assert "| native | native |" in table.to_markdown()


def test_bad_inputs_fail_with_one_line_errors(micro_setup) -> None:
    model, data = micro_setup
    with pytest.raises(TypeError, match="interpretable-by-design"):
        same_model_table(model, data)
    with pytest.raises(ValueError, match="unknown method"):
        same_model_table(KnownMaps().eval(), HandTraits(), methods=["no_such_method"])
    with pytest.raises(ValueError, match="TraitShapes trait masks"):
        same_model_table(KnownMaps().eval(), [{"image": torch.rand(3, 8, 8), "label": 0}])


def test_tiny_promptcam_end_to_end(micro_setup) -> None:
    model, data = micro_setup
    torch.manual_seed(0)
    net = PromptCAM(copy.deepcopy(model), 2).eval()
    table = same_model_table(net, data, methods=["input_x_gradient", "cdam", "rollout"], n_images=2, steps=4,
                             n_boot=50)
    # top_k "auto": round(R/3) heads, at least 1 — one of the micro ViT's 2 heads; CDAM runs on Prompt-CAM's ViT
    assert [(r.method, r.kind) for r in table.rows] == [("native", "native"), ("native_top1", "native top-k"),
                                                         ("input_x_gradient", "post-hoc"), ("cdam", "post-hoc")]
    assert table.skipped["rollout"] == method_refusal(net, "rollout")
    for row in [*table.rows, table.chance]:
        assert set(row.values) == set(COLUMNS)
        for col, e in row.values.items():
            assert math.isfinite(e.value), (row.method, col)
    # the top-1-head map is one head's map, not the head mean
    assert table.row("native_top1").values["trait_energy"].value != pytest.approx(
        table.row("native").values["trait_energy"].value)
    assert 0.0 <= table.accuracy.value <= 1.0 and table.n_images == 2


def test_benchmark_script_writes_markdown_and_json(tmp_path, monkeypatch) -> None:
    from traitlens.backbones import create_preset, save_model
    from traitlens.data.traitshapes import TraitShapesConfig, class_names

    torch.manual_seed(0)
    names = class_names(TraitShapesConfig(size=32, num_classes=2, seed=0))
    net = PromptCAM(create_preset("traitlens-vit-micro", 0), 2, class_names=names)
    save_model(net, tmp_path / "promptcam" / "best")
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "same_model.py"
    spec = importlib.util.spec_from_file_location("same_model_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "out"
    argv = ["same_model.py", "--quickstart", str(tmp_path), "--size", "32", "--num-classes", "2", "--n-images", "2",
            "--methods", "input_x_gradient,cdam,rollout", "--steps", "4", "--n-boot", "20", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    results = json.loads((out / "same_model.json").read_text())
    assert [r["method"] for r in results["promptcam"]["rows"]] == ["native", "native_top1", "input_x_gradient",
                                                                   "cdam"]
    assert "rollout" in results["promptcam"]["skipped"]
    assert "| native | native |" in (out / "same_model.md").read_text()
    with pytest.raises(SystemExit, match="--force"):  # existing outputs are never overwritten silently
        bench.main()
