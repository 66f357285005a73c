"""TraitShapes exported to the CUB layout and read back keeps its trait table: the trait metrics of `evaluate` give
exactly the numbers of the in-memory dataset, and real CUB (no traits.json) behaves as before."""

from __future__ import annotations

import shutil

import pytest
import torch

from traitlens.data import CUBDataset, TraitShapes, export_cub, materialize
from traitlens.data.traitshapes import sibling_pairs
from traitlens.evaluation import evaluate
from traitlens.evaluation._data import trait_info

METRICS = ["pointing_game@trait", "energy_pointing_game@trait", "iou@trait", "pointing_game@class",
           "energy_pointing_game@object", "trait_precision"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, setup_factory):
    model, data = setup_factory(n=6, num_classes=4, slots=("head_colour", "wing_pattern", "tail_shape"))
    train = materialize(TraitShapes(data.config, "train", 2), num_workers=0, progress=False)
    root = export_cub(train, tmp_path_factory.mktemp("cub"), test=data)
    return model, data, root


def test_trait_info_is_the_same_from_the_exported_table(exported):
    _, data, root = exported
    back = CUBDataset(root, split="test")
    mem, disk = trait_info(data), trait_info(back)
    assert disk is not None
    assert disk == mem  # slots, parts, class traits, siblings, defining slots and names
    pairs = {(a, b, slot) for a, b, slot in sibling_pairs(data.config)}
    assert {(a, b, s) for a, sib in disk.siblings.items() for b, s in sib if a < b} == pairs and pairs


def test_trait_metrics_match_after_export_and_reload(exported):
    model, data, root = exported
    back = CUBDataset(root, split="test")
    kw = dict(methods=["cdam", "rollout"], metrics=METRICS, batch_size=4, progress=False, n_boot=0)
    mem, disk = evaluate(model, data, **kw), evaluate(model, back, **kw)
    assert not mem.skipped and not disk.skipped
    assert list(disk.results) == list(mem.results)
    labels = {k for _, k in mem.results}
    assert {"pointing_game@trait", "iou@trait", "pointing_game@class", "trait_ebpg", "contrast_ebpg"} <= labels
    for key, r in mem.results.items():
        torch.testing.assert_close(disk.results[key].values, r.values, rtol=0, atol=0, equal_nan=True, msg=str(key))
    # the LSC 'traits' rule reads the same table, so it picks the same classes
    kw = dict(methods=["rollout"], metrics=["pointing_game"], target="lsc", lsc="traits", progress=False, n_boot=0)
    a, b = evaluate(model, data, **kw), evaluate(model, back, **kw)
    assert torch.equal(a.results[("rollout", "pointing_game")].extras["classes"],
                       b.results[("rollout", "pointing_game")].extras["classes"])


def test_without_traits_json_it_is_plain_cub(exported, tmp_path):
    model, _, root = exported
    plain = tmp_path / "cub"
    shutil.copytree(root, plain)
    (plain / "traits.json").unlink()
    ds = CUBDataset(plain, split="test")
    assert ds.trait_table is None and trait_info(ds) is None and "trait_masks" not in ds[0]
    res = evaluate(model, ds, ["rollout"], ["pointing_game@trait", "trait_precision", "pointing_game"],
                   progress=False, n_boot=0)
    assert "TraitShapes" in res.skipped["rollout/pointing_game@trait"]
    assert "TraitShapes" in res.skipped["rollout/trait_precision"]
    assert ("rollout", "pointing_game") in res.results
    with pytest.raises(ValueError, match="needs a TraitShapes dataset"):
        evaluate(model, ds, ["rollout"], ["gini"], target="lsc", lsc="traits", progress=False)
