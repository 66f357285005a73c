"""TraitShapes: determinism, exact masks, siblings, balance and the dataset wrappers."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest
import torch

from traitlens.data import traitshapes as ts
from traitlens.data.traitshapes import (
    PART_NAMES,
    SLOTS,
    TraitShapes,
    TraitShapesConfig,
    class_mask,
    class_names,
    class_traits,
    colour_histogram_baseline,
    discriminative_mask,
    materialize,
    render,
    sample_label,
    sibling_pairs,
)

CFG = TraitShapesConfig(size=48, num_classes=16, seed=3)
# No lighting jitter or noise: every pixel then has exactly its owner's colour.
FLAT = dataclasses.replace(CFG, lighting=0.0)


def test_same_index_renders_identically_and_order_does_not_matter() -> None:
    a = [render(CFG, i) for i in (5, 6, 7)]
    b = [render(CFG, i) for i in (7, 5, 6)]
    for x, y in zip(a, (b[1], b[2], b[0]), strict=True):
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.owner, y.owner)
        assert x.label == y.label and x.box == y.box
    assert not np.array_equal(a[0].image, a[1].image)


def test_seed_and_split_change_the_image() -> None:
    base = render(CFG, 0).image
    assert not np.array_equal(base, render(dataclasses.replace(CFG, seed=4), 0).image)
    assert not np.array_equal(base, render(CFG, 0, split="test").image)


def test_config_validation() -> None:
    for bad in (
        {"size": 16},
        {"size": 256},
        {"preset": "easy"},
        {"num_classes": 55},
        {"num_classes": 1},
        {"oversample": 0},
        {"slots": ("head_colour", "beak")},
        {"slots": ("crest",), "num_classes": 3},
    ):
        with pytest.raises(ValueError):
            TraitShapesConfig(**bad)
    assert TraitShapesConfig(preset="hard").scale_range == (0.45, 0.8)
    assert TraitShapesConfig(preset="hard").distractor_range == (2, 5)


@pytest.mark.parametrize("index", range(12))
def test_masks_are_exactly_the_owned_pixels_with_the_owner_colour(index: int) -> None:
    s = render(FLAT, index)
    values = {slot: SLOTS[slot][v] for slot, v in zip(FLAT.slots, s.traits, strict=True)}
    parts = s.part_masks
    # Parts partition the foreground.
    assert parts.sum(0).max() == 1
    np.testing.assert_array_equal(parts.any(0), s.foreground)
    # Head pixels have exactly the head colour of the class, and no other critter pixel has it.
    head_rgb = np.round(np.asarray(ts._HEAD_RGB[values["head_colour"]]) * 255)
    is_head_colour = (np.abs(s.image.astype(float) - head_rgb).max(-1) <= 1) & s.foreground
    np.testing.assert_array_equal(is_head_colour, parts[PART_NAMES.index("head")])
    beak_rgb = np.round(np.asarray(ts._BEAK_RGB) * 255)
    is_beak_colour = (np.abs(s.image.astype(float) - beak_rgb).max(-1) <= 1) & s.foreground
    np.testing.assert_array_equal(is_beak_colour, parts[PART_NAMES.index("beak")])
    # The crest exists iff the class has one; body, tail and crest are each one flat colour,
    # the tail darker than the body, and no two of them share a colour.
    crest = parts[PART_NAMES.index("crest")]
    assert crest.any() == (values["crest"] == "spike")
    colours = {}
    for name in ("body", "tail", "crest"):
        pixels = s.image[parts[PART_NAMES.index(name)]]
        if len(pixels):
            unique = np.unique(pixels, axis=0)
            assert len(unique) == 1, name
            colours[name] = tuple(int(c) for c in unique[0])
    assert len(set(colours.values())) == len(colours)
    assert sum(colours["tail"]) < 0.6 * sum(colours["body"])
    # Trait masks are the part masks of their slots.
    for j, slot in enumerate(FLAT.slots):
        np.testing.assert_array_equal(s.trait_masks[j], parts[PART_NAMES.index(ts.SLOT_PARTS[slot])])


def test_wing_pattern_colours_follow_the_class() -> None:
    seen = set()
    for i in range(40):
        s = render(FLAT, i)
        pattern = SLOTS["wing_pattern"][s.traits[FLAT.slots.index("wing_pattern")]]
        wing = s.image[s.part_masks[PART_NAMES.index("wing")]]
        dark = (wing.max(-1) < 128).mean()
        if pattern == "plain":
            assert dark == 0
        elif wing.shape[0] > 30:
            assert 0.1 < dark < 0.8, (pattern, dark)
        seen.add(pattern)
    assert seen == set(SLOTS["wing_pattern"])


def test_critter_is_inside_the_canvas_and_box_matches_foreground() -> None:
    cfg = dataclasses.replace(CFG, scale=(1.0, 1.0))  # the largest critter must still fit
    for i in range(20):
        s = render(cfg, i)
        fg = s.foreground
        assert not (fg[0].any() or fg[-1].any() or fg[:, 0].any() or fg[:, -1].any())
        rows, cols = np.nonzero(fg)
        assert s.box == (cols.min(), rows.min(), cols.max() + 1.0, rows.max() + 1.0)
        # Every visible part's centroid point lies inside the box.
        vis = s.parts[:, 2] > 0
        assert (s.parts[vis, 0] >= s.box[0]).all() and (s.parts[vis, 0] <= s.box[2]).all()


def test_critter_covers_the_calibrated_share_of_the_canvas() -> None:
    boxes = [render(CFG, i).box for i in range(30)]
    widths = [max(x1 - x0, y1 - y0) / CFG.size for x0, y0, x1, y1 in boxes]
    assert min(widths) > 0.45 and max(widths) <= 1.0 and np.mean(widths) > 0.6


def test_classes_are_distinct_and_every_class_has_a_sibling() -> None:
    for c in (4, 8, 10, 16, 54):
        cfg = dataclasses.replace(CFG, num_classes=c)
        traits = class_traits(cfg)
        assert len(set(traits)) == c
        pairs = sibling_pairs(cfg)
        assert {a for a, _, _ in pairs} | {b for _, b, _ in pairs} == set(range(c))
        for a, b, slot in pairs:
            diff = [j for j in range(len(cfg.slots)) if traits[a][j] != traits[b][j]]
            assert diff == [slot]
    # With 16 classes every value of every slot is used (every slot defines classes).
    traits = np.asarray(class_traits(CFG))
    assert [len(set(traits[:, j])) for j in range(4)] == [len(SLOTS[s]) for s in CFG.slots]
    names = class_names(CFG)
    assert len(set(names)) == 16 and all(n.count("/") == 3 for n in names)
    assert "red-head/plain/fan/no-crest" in names


def test_labels_are_balanced_and_not_a_plain_cycle() -> None:
    labels = [sample_label(CFG, i) for i in range(16 * 20)]
    assert Counter(labels) == dict.fromkeys(range(16), 20)
    assert labels[:16] != list(range(16))
    assert [render(CFG, i).label for i in range(5)] == labels[:5]


@pytest.mark.parametrize("pair", [0, 3, 7, 11, 19, 25])
def test_siblings_with_one_seed_differ_only_inside_the_differing_trait(pair: int) -> None:
    a, b, slot = sibling_pairs(CFG)[pair]
    for index in (0, 1, 2):
        sa, sb = render(CFG, index, label=a), render(CFG, index, label=b)
        diff = (sa.image != sb.image).any(-1)
        allowed = sa.trait_masks[slot] | sb.trait_masks[slot]
        assert diff.any(), "siblings must look different"
        assert not (diff & ~allowed).any(), f"pixels changed outside slot {CFG.slots[slot]}"
        np.testing.assert_array_equal(discriminative_mask(sa, b, CFG) | discriminative_mask(sb, a, CFG), allowed)
        # Nothing else moved: the other parts keep their masks.
        other = [PART_NAMES.index(ts.SLOT_PARTS[s]) for k, s in enumerate(CFG.slots) if k != slot]
        same = ~allowed
        np.testing.assert_array_equal(sa.part_masks[other] & same, sb.part_masks[other] & same)


def test_discriminative_and_class_masks() -> None:
    s = render(CFG, 4)
    own = discriminative_mask(s, s.label, CFG)
    assert not own.any()
    assert class_mask(s, CFG).sum() == s.trait_masks.any(0).sum()
    # With only 2 classes differing in one slot, the class mask is that slot's mask alone.
    cfg2 = dataclasses.replace(CFG, num_classes=2)
    s2 = render(cfg2, 0)
    (slot,) = [j for j in range(4) if class_traits(cfg2)[0][j] != class_traits(cfg2)[1][j]]
    np.testing.assert_array_equal(class_mask(s2, cfg2), s2.trait_masks[slot])
    other = 1 - s2.label
    np.testing.assert_array_equal(discriminative_mask(s2, other, cfg2), s2.trait_masks[slot])


def test_oversampling_keeps_the_scene() -> None:
    cfg2 = dataclasses.replace(CFG, oversample=2)
    for i in range(4):
        s1, s2 = render(CFG, i), render(cfg2, i)
        assert s1.label == s2.label
        agree = (s1.owner == s2.owner).mean()
        assert agree > 0.97, agree
        assert np.abs(s1.image.astype(int) - s2.image.astype(int)).mean() < 12


def test_dataset_items_and_materialize_agree() -> None:
    ds = TraitShapes(CFG, split="val", length=40)
    assert ds.classes == class_names(CFG) and ds.num_classes == 16 and len(ds) == 40
    item = ds[7]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 48, 48)
    assert item["image"].min() >= 0.0 and item["image"].max() <= 1.0
    assert item["label"].dtype == torch.int64 and item["index"] == 7
    assert item["mask"].shape == (1, 48, 48) and item["mask"].dtype == torch.bool
    assert item["part_masks"].shape == (len(PART_NAMES), 48, 48)
    assert item["trait_masks"].shape == (4, 48, 48)
    raw = render(CFG, 7, split="val")
    np.testing.assert_array_equal((item["image"] * 255).round().byte().permute(1, 2, 0).numpy(), raw.image)
    np.testing.assert_array_equal(item["trait_masks"].numpy(), raw.trait_masks)
    assert item["box"].tolist() == list(raw.box)
    with pytest.raises(IndexError):
        ds[40]

    mem = materialize(ds, num_workers=2, progress=False, chunk_size=16)
    assert len(mem) == 40 and mem.classes == ds.classes
    for i in (0, 7, 39):
        x, y = ds[i], mem[i]
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], torch.Tensor):
                assert torch.equal(x[key], y[key]), key
            else:
                assert x[key] == y[key]
    serial = materialize(ds, num_workers=0, progress=False, chunk_size=16)
    assert torch.equal(serial.images, mem.images) and torch.equal(serial.owners, mem.owners)
    assert len(materialize(TraitShapes(CFG, length=0), progress=False)) == 0


def test_dataset_dict_masks_work_with_the_mask_helpers() -> None:
    ds = TraitShapes(CFG, length=8)
    item = ds[2]
    s = ds.raw(2)
    a, b, _ = next(p for p in sibling_pairs(CFG) if s.label in p[:2])
    other = b if s.label == a else a
    np.testing.assert_array_equal(discriminative_mask(item, other, CFG).numpy(), discriminative_mask(s, other, CFG))


def test_colour_histogram_baseline_separates_colour_but_not_shape() -> None:
    # Two classes that differ only by head colour are separable from colour histograms ...
    colour_cfg = TraitShapesConfig(size=32, num_classes=2, slots=("head_colour",), distractors=(0, 0))
    train, test = TraitShapes(colour_cfg, length=300), TraitShapes(colour_cfg, "test", 200)
    colour_acc = colour_histogram_baseline(materialize(train, num_workers=0, progress=False), test)
    assert colour_acc > 0.85
    # ... but tails of equal area (fan vs fork) are not: only their outline differs.
    shape_cfg = dataclasses.replace(colour_cfg, slots=("tail_shape",))
    train, test = TraitShapes(shape_cfg, length=300), TraitShapes(shape_cfg, "test", 200)
    assert colour_histogram_baseline(train, test) < 0.7


def test_head_is_the_first_samples_with_their_masks() -> None:
    cfg = TraitShapesConfig(size=32, num_classes=4, seed=3)
    full = ts.materialize(ts.TraitShapes(cfg, "test", 6), num_workers=0, progress=False)
    head = full.head(4)
    assert len(head) == 4 and head.config is full.config and head.classes == full.classes
    for i in range(4):
        a, b = head[i], full[i]
        assert a["label"] == b["label"] and torch.equal(a["image"], b["image"])
        assert torch.equal(a["part_masks"], b["part_masks"])
    assert len(full) == 6  # the parent split is untouched
