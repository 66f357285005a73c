"""The trait atlas (docs/atlas.md): part shares and lifts, confused pairs, TraitShapes hits, resume, data without
parts, native maps with ranked heads, the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import traitlens as tl
from traitlens.evaluation import Atlas, AtlasResumeError, atlas, confused_pairs, part_evidence
from traitlens.evaluation.atlas import lift_of, top_part
from traitlens.explain import IncompatibleMethodError
from traitlens.metrics import raw_pixel_maps

PARTS = ["body", "head", "beak", "wing", "tail", "crest"]


@pytest.fixture(scope="module")
def setup4(setup_factory):
    """A random micro ViT and 12 TraitShapes images (32 px) of 4 classes over two slots."""
    return setup_factory(n=12, num_classes=4)


def _files(folder: Path) -> dict[str, bytes]:
    """Every output file but the resumable state and the timing (which differ between runs by design)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.parts[len(folder.parts)] != "state" and p.name != "timing.json"}


def test_part_shares_and_lift_of_a_hand_made_map():
    # 4×4 image: part A = the top-left 2×2 block (area 4/16), part B = pixel (3, 3) (area 1/16); background the rest.
    masks = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    masks[0, 0, :2, :2] = True
    masks[0, 1, 3, 3] = True
    pos = torch.ones(1, 4, 4, dtype=torch.float64)
    pos[0, 3, 3] = 4.0  # Σ = 4 (A) + 4 (B) + 11 (background) = 19
    shares, area = part_evidence(pos, masks)
    assert torch.allclose(shares, torch.tensor([[4 / 19, 4 / 19, 11 / 19]], dtype=torch.float64))
    assert torch.allclose(area, torch.tensor([[4 / 16, 1 / 16, 11 / 16]], dtype=torch.float64))
    lift = lift_of(shares, area)
    assert torch.allclose(lift, torch.tensor([16 / 19, 64 / 19, 16 / 19], dtype=torch.float64))
    # The background holds most of the evidence by size, yet the small part B has the highest lift and wins.
    named = dict(zip(["A", "B", "background"], lift.tolist(), strict=True))
    assert top_part(named, ["A", "B"]) == "B" and shares[0].argmax() == 2
    # Over images: ratio of the means; an image without positive evidence (NaN shares) is left out of the shares.
    none = part_evidence(torch.zeros(1, 4, 4, dtype=torch.float64), masks)
    assert torch.isnan(none[0]).all()
    both = lift_of(torch.cat([shares, none[0]]), torch.cat([area, none[1]]))
    assert torch.allclose(both, lift)
    # A part absent from every image has no lift and is never the top part.
    assert math.isnan(float(lift_of(shares, torch.tensor([[0.0, 1 / 16, 15 / 16]]))[0]))


def test_confused_pairs_of_a_hand_made_matrix():
    cm = np.array([[5, 3, 1, 1],
                   [0, 10, 0, 0],
                   [2, 2, 4, 2],
                   [0, 0, 0, 0]])
    assert confused_pairs(cm, 2) == {0: [1, 2], 1: [], 2: [0, 1]}  # ties → lower index; row 3 has no image
    soft = np.array([[0.6, 0.2, 0.05, 0.15],
                     [0.1, 0.8, 0.03, 0.07],
                     [0.1, 0.15, 0.5, 0.25],
                     [0.25, 0.25, 0.25, 0.25]])
    # soft breaks ties in count, and fills a never-confused class with its nearest classes
    assert confused_pairs(cm, 2, soft) == {0: [1, 3], 1: [0, 3], 2: [3, 1]}
    assert confused_pairs(cm, 5, soft)[0] == [1, 3, 2]


def test_atlas_on_traitshapes(setup4, tmp_path):
    model, data = setup4
    res = atlas(model, data, "cdam", tmp_path, batch_size=5, progress=False)
    assert res.parts == PARTS and [c.index for c in res.classes] == [0, 1, 2, 3]
    # The confusion matrix is the model's own predictions; accuracy and per-class counts follow from it.
    x = tl.normalize(model, torch.stack([data[i]["image"] for i in range(len(data))]))
    preds, labels = model(x).argmax(1), torch.stack([data[i]["label"] for i in range(len(data))])
    cm = torch.bincount(labels * 4 + preds, minlength=16).view(4, 4)
    assert res.confusion == cm.tolist()
    assert res.accuracy == pytest.approx(float((preds == labels).double().mean()))
    for c in res.classes:
        assert (c.n, c.n_correct) == (int((labels == c.index).sum()), int(cm[c.index, c.index]))
        assert [p.count for p in c.confused] == [int(cm[c.index, p.other]) for p in c.confused]
        assert all(p.other != c.index for p in c.confused) and len(c.confused) == 2
    # The shares of class 0 are those of its images explained one by one (target = the true class).
    sel = (labels == 0).nonzero().flatten()
    exp = tl.explain(model, x[sel], method="cdam", target=labels[sel])
    masks = torch.stack([data[int(i)]["part_masks"] for i in sel])
    shares, area = part_evidence(raw_pixel_maps(exp)[:, 0].double().clamp_min(0), masks)
    c0 = res.classes[0]
    assert [c0.shares[p] for p in PARTS] == pytest.approx(shares.nanmean(0)[:6].tolist(), rel=1e-5, abs=1e-9)
    assert [c0.lift[p] for p in PARTS[:5]] == pytest.approx(lift_of(shares, area)[:5].tolist(), rel=1e-5)
    # TraitShapes: the expected parts are those of the slots a class differs in from its siblings.
    from traitlens.evaluation._data import trait_info

    info = trait_info(data)
    assert info is not None
    for c in res.classes:
        expected = sorted({info.slot_parts[s] for _, s in info.siblings[c.index]})
        assert c.expected == expected
        assert c.hit == (c.top_part in expected)
        assert c.top_part != "background" and c.top_part == max(
            (p for p in PARTS if math.isfinite(c.lift[p])), key=lambda p: c.lift[p])
        for p in c.confused:  # a pair's expected parts: where the two classes' traits differ
            diff = [j for j, (u, v) in enumerate(zip(info.class_traits[c.index], info.class_traits[p.other],
                                                     strict=True)) if u != v]
            assert p.expected == sorted({info.slot_parts[j] for j in diff})
    hits = [c.hit for c in res.classes]
    assert res.hit_fraction == pytest.approx(sum(hits) / 4) and res.n_hit_classes == 4
    # Files: the same data machine-readable, and back.
    back = Atlas.load(tmp_path)
    assert back.to_dict() == res.to_dict()
    header = (tmp_path / "classes.csv").read_text().splitlines()[0].split(",")
    assert {"share_head", "lift_head", "share_background", "top_part", "expected", "hit"} <= set(header)
    assert len((tmp_path / "pairs.csv").read_text().splitlines()) == 1 + 8
    for c in res.classes:
        for e in c.exemplars:
            assert int(preds[e.index]) == c.index == int(labels[e.index])  # correctly classified
            assert back.image(e.files["map"]).startswith(b"\x89PNG")
            assert {f"contrast-{p.other}" for p in c.confused} <= set(e.files)


def test_resume_after_a_kill_gives_identical_files(setup4, tmp_path):
    model, data = setup4
    straight = tmp_path / "straight"
    atlas(model, data, "cdam", straight, batch_size=3, progress=False)

    def kill_after_two(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        atlas(model, data, "cdam", resumed, batch_size=3, progress=False, on_batch=kill_after_two)
    assert len(list((resumed / "state" / "batches").glob("*.pt"))) == 2 and not (resumed / "atlas.json").exists()
    again = atlas(model, data, "cdam", resumed, batch_size=3, progress=False)
    assert _files(resumed) == _files(straight) and len(_files(straight)) > 10
    assert (resumed / "timing.json").read_text().count('"images_timed": 6')  # only the 2 missing batches ran
    assert again.seconds_per_image is not None
    # Another method (or model, or selection) in the same folder is refused, not mixed; resume=False starts over.
    with pytest.raises(AtlasResumeError, match="differs in: method"):
        atlas(model, data, "gradcam_vit", resumed, batch_size=3, progress=False)
    fresh = atlas(model, data, "gradcam_vit", resumed, batch_size=3, progress=False, resume=False, classes=[0],
                  exemplars=0)
    assert fresh.method == "gradcam_vit" and Atlas.load(resumed).method == "gradcam_vit"


def test_classes_max_per_class_and_refusals(setup4):
    model, data = setup4
    res = atlas(model, data, "cdam", classes=["blue-head/plain", "1"], max_per_class=2, exemplars=1,
                progress=False)
    assert [c.index for c in res.classes] == [1, 3] and res.n_images == 4
    assert all(len(c.exemplars) <= 1 for c in res.classes)
    with pytest.raises(ValueError, match="unknown class 'zebra'"):
        atlas(model, data, classes=["zebra"], progress=False)
    with pytest.raises(IncompatibleMethodError, match="native"):
        atlas(model, data, "native", progress=False)


def test_image_folder_has_no_part_columns(setup_factory, tmp_path):
    from PIL import Image

    from traitlens.data import ImageFolderDataset

    model, data = setup_factory(n=6, num_classes=2)
    for i in range(6):
        item = data[i]
        folder = tmp_path / "images" / ("a", "b")[int(item["label"])]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((item["image"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(folder / f"{i}.png")
    res = atlas(model, ImageFolderDataset(tmp_path / "images"), "cdam", tmp_path / "out", progress=False)
    assert res.parts == [] and res.hit_fraction is None and res.heads == []
    assert all(c.shares == {} and c.top_part is None for c in res.classes)
    assert [len(c.confused) for c in res.classes] == [1, 1] and res.n_images == 6
    header = (tmp_path / "out" / "classes.csv").read_text().splitlines()[0]
    assert header == "class_index,class,n,n_correct,accuracy,confused_with"
    names = {e.name for c in res.classes for e in c.exemplars}
    assert names <= {f"{i}.png" for i in range(6)}


def test_cub_part_points_give_disks(setup_factory, tmp_path):
    from traitlens.data import CUBDataset
    from traitlens.data.traitshapes import export_cub
    from traitlens.evaluation import part_disks

    model, data = setup_factory(n=6, num_classes=2)
    export_cub(data, tmp_path / "cub", test=data)
    cub = CUBDataset(tmp_path / "cub", split="test", with_masks=False)  # part points only, no part masks
    res = atlas(model, cub, "cdam", progress=False, point_radius=3)
    assert res.parts == cub.part_names
    sel = [i for i in range(len(cub)) if int(cub[i]["label"]) == 0]
    disks = part_disks(torch.stack([cub[i]["parts"] for i in sel]), (32, 32), 3)
    expected = disks.double().flatten(-2).mean(-1).mean(0)
    assert [res.classes[0].area[p] for p in cub.part_names] == pytest.approx(expected.tolist())


def test_native_prompt_cam_ranks_the_exemplar_heads(setup4):
    from traitlens.backbones import create_preset
    from traitlens.models import PromptCAM
    from traitlens.models.head_ranking import rank_heads

    _, data = setup4
    torch.manual_seed(0)
    net = PromptCAM(create_preset("traitlens-vit-micro", 0), 4).eval()
    res = atlas(net, data, "native", confused=1, exemplars=1, progress=False)
    R = net.vit.blocks[-1].attn.num_heads
    assert res.head_ranking == "blurring" and [h["head"] for h in res.heads] == list(range(R))
    assert all(h["top_part"] in PARTS for h in res.heads)
    c = next(c for c in res.classes if c.exemplars)
    e = c.exemplars[0]
    x = tl.normalize(net, data[e.index]["image"][None])
    assert [h for h, _ in e.heads] == rank_heads(net, x, c.index, k=0).order[0].tolist()
    assert len({f for _, f in e.heads}) == R


@pytest.mark.parametrize(("kind", "ranking", "n_heads"), [("intr", "index", 2), ("scouter", None, 0)])
def test_native_intr_and_scouter(setup4, kind, ranking, n_heads):
    from traitlens.backbones import create_preset
    from traitlens.models import INTR, SCOUTER

    _, data = setup4
    torch.manual_seed(0)
    backbone = create_preset("traitlens-vit-micro", 0)
    net = (INTR(backbone, 4, hidden_dim=16, nheads=2, enc_layers=1, dec_layers=1, dim_feedforward=32)
           if kind == "intr" else SCOUTER(backbone, 4, hidden_dim=8, slots_per_class=2, e=-1)).eval()
    res = atlas(net, data, "native", confused=1, exemplars=1, progress=False)
    assert res.head_ranking == ranking and len(res.heads) == n_heads and res.contrast
    # INTR defines no head ranking: its heads come in index order; SCOUTER has none.
    assert all([h for h, _ in e.heads] == list(range(n_heads)) for c in res.classes for e in c.exemplars)


def test_a_post_hoc_method_on_a_cnn(setup4):
    class TinyCNN(torch.nn.Module):
        """No ViT: a logits-only conv net (pixel methods run on any differentiable classifier)."""

        def __init__(self) -> None:
            super().__init__()
            self.num_classes = 4
            self.pretrained_cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).mean((2, 3))

    _, data = setup4
    torch.manual_seed(0)
    net = TinyCNN().eval()
    res = atlas(net, data, "input_x_gradient", progress=False)
    assert res.parts == PARTS and res.n_images == 12
    # Disjoint parts + background hold all the evidence (a class without any positive evidence has none: NaN).
    sums = [sum(c.shares.values()) for c in res.classes]
    assert all(abs(v - 1) < 1e-6 or math.isnan(v) for v in sums) and sum(abs(v - 1) < 1e-6 for v in sums) >= 2
    with pytest.raises(IncompatibleMethodError, match="cdam"):
        atlas(net, data, "cdam", progress=False)


def test_cli_writes_the_pages_and_refuses_a_method_that_does_not_run(setup_factory, tmp_path):
    from typer.testing import CliRunner

    from traitlens.backbones import save_model
    from traitlens.cli import app

    model, _ = setup_factory(n=2, num_classes=4)
    model_dir = save_model(model, tmp_path / "best")
    runner = CliRunner()
    result = runner.invoke(app, ["atlas", "--model", str(model_dir), "--data", "traitshapes:8", "--max-per-class",
                                 "1", "--out", str(tmp_path / "atlas"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "4 images, 4 classes" in result.output and "of 4 classes" in result.output
    assert (tmp_path / "atlas" / "index.html").is_file() and len(list((tmp_path / "atlas" / "classes").iterdir())) == 4
    assert Atlas.load(tmp_path / "atlas").model == f"{tmp_path.name}/best"  # a folder's last two names, no path
    refused = runner.invoke(app, ["atlas", "--model", str(model_dir), "--data", "traitshapes:8", "--method", "native",
                                  "--out", str(tmp_path / "x")])
    assert refused.exit_code == 2 and "error: method 'native' does not run on VisionTransformer" in refused.output
    assert not (tmp_path / "x").exists()
