"""`Explanation.save` / `Explanation.load`: every field round-trips, in both formats, without unpickling."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from traitlens.explain import Explanation


def full_explanation() -> Explanation:
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(2, 3, 8, 8, generator=g)
    return Explanation(
        maps=maps, patch_maps=torch.randn(2, 3, 4, 4, generator=g).double(),
        targets=torch.tensor([[1, 2, 0], [0, 1, 2]]), method="cdam", logits=torch.randn(2, 5, generator=g),
        head_maps=torch.rand(2, 3, 2, 4, 4, generator=g),
        degenerate=torch.tensor([[False, True, False], [False, False, False]]), signed=True,
        target_names=[["b", "c", "a"], ["a", "b", "c"]],
        extras={"normalize": "maxabs", "upsample": "bilinear", "n_rows": 3, "noise_level": 0.15, "inject_at": None,
                "knob_list": [1, 2.5, "x"], "raw_pixel_maps": maps,
                "pixel_maps": torch.rand(2, 3, 8, 8, generator=g), "prefix_scores": torch.rand(2, 3, 1, generator=g),
                "view": maps[:, :1]})  # a view sharing memory with `maps`


def assert_same(a: Explanation, b: Explanation) -> None:
    for name in ("maps", "patch_maps", "targets", "logits", "head_maps", "degenerate"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and torch.equal(x, y), name
    assert (a.method, a.signed, a.target_names) == (b.method, b.signed, b.target_names)
    assert list(a.extras) == list(b.extras)
    for k, v in a.extras.items():
        if isinstance(v, torch.Tensor):
            assert isinstance(b.extras[k], torch.Tensor) and torch.equal(v, b.extras[k]), k
        else:
            assert b.extras[k] == v, k


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_every_field_round_trips(tmp_path, suffix):
    exp = full_explanation()
    path = exp.save(tmp_path / f"e{suffix}", extra_meta={"seconds": 0.25, "note": "x"})
    back = Explanation.load(path)
    assert_same(exp, back)
    assert back.extras["raw_pixel_maps"] is back.maps  # stored once, one object again
    assert Explanation.read_meta(path) == {"seconds": 0.25, "note": "x"}
    if suffix == ".npz":  # the plain entries older readers use are still there, and no pickles
        with np.load(path, allow_pickle=False) as z:
            assert str(z["method"]) == "cdam" and bool(z["signed"]) and z["patch_maps"].shape == (2, 3, 4, 4)


def test_minimal_explanation_and_device(tmp_path):
    exp = Explanation(maps=torch.zeros(1, 1, 4, 4), patch_maps=torch.zeros(1, 1, 2, 2),
                      targets=torch.zeros(1, 1, dtype=torch.long), method="rollout")
    path = exp.save(tmp_path / "m.safetensors")
    back = Explanation.load(path, device="cpu")
    assert_same(exp, back)
    assert back.extras == {} and Explanation.read_meta(path) == {}


def test_unstorable_extras_and_meta_are_refused(tmp_path):
    exp = full_explanation()
    exp.extras["array"] = np.zeros(2)
    with pytest.raises(TypeError, match="neither a tensor nor JSON-able"):
        exp.save(tmp_path / "e.safetensors")
    with pytest.raises(TypeError, match="extra_meta"):
        Explanation(maps=exp.maps, patch_maps=exp.patch_maps, targets=exp.targets,
                    method="x").save(tmp_path / "f.safetensors", extra_meta={"t": object()})
    with pytest.raises(ValueError, match="unsupported suffix"):
        exp.save(tmp_path / "e.pt")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_files_without_the_json_document_still_load(tmp_path):
    from safetensors.torch import save_file

    exp = full_explanation()
    path = tmp_path / "old.safetensors"
    save_file({"maps": exp.maps.contiguous(), "patch_maps": exp.patch_maps, "targets": exp.targets},
              str(path), metadata={"method": "cdam", "signed": "True"})
    back = Explanation.load(path)
    assert back.method == "cdam" and back.signed and torch.equal(back.maps, exp.maps) and back.extras == {}
    save_file({"maps": exp.maps.contiguous(), "mystery": exp.maps.clone()}, str(tmp_path / "bad.safetensors"),
              metadata={"method": "cdam"})
    with pytest.raises(ValueError, match="not fields"):
        Explanation.load(tmp_path / "bad.safetensors")


def test_metadata_is_json(tmp_path):
    from safetensors import safe_open

    path = full_explanation().save(tmp_path / "e.safetensors", extra_meta={"seconds": 1.5})
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["method"] == "cdam" and meta["signed"] == "True"
    doc = json.loads(meta["traitlens.explanation"])
    assert doc["extras"]["normalize"] == "maxabs" and doc["refs"] == {"extras.raw_pixel_maps": "maps"}
