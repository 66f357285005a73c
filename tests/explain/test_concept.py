"""CDAM concept mode (posthoc.md §2): the Concept type, its serialisation and the concept-target oracles."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from traitlens.backbones.preprocess import load_images, normalize
from traitlens.backbones.probe import AttentionProbe
from traitlens.explain import explain
from traitlens.explain._concept import Concept, backbone_id, preprocessing_hash


def _latent(model, images):
    return model.forward_head(model.forward_features(images), pre_logits=True)


def _headless(model):
    model.reset_classifier(0)
    return model


def _named(model, arch="vit_tiny_test.fixture"):
    """Give a hand-built model the provenance `timm.create_model` would attach."""
    model.pretrained_cfg = {"architecture": arch.split(".")[0], "tag": arch.split(".")[1],
                            "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "input_size": (3, 8, 8)}
    return model


def test_from_images_is_the_mean_pre_logit_latent(tiny_vit, tiny_images) -> None:
    model = _named(tiny_vit(depth=2))
    images = tiny_images(5, seed=3)
    concept = Concept.from_images(model, images, "stripes", batch_size=2)
    with torch.no_grad():
        expected = _latent(model, images).mean(0)
    torch.testing.assert_close(concept.vector, expected, atol=1e-12, rtol=0)
    assert not concept.vector.requires_grad
    assert concept.vector.shape == (model.embed_dim,)
    assert (concept.name, concept.n_images, concept.similarity) == ("stripes", 5, "dot")
    assert concept.backbone == "vit_tiny_test.fixture" == backbone_id(model)
    assert concept.preprocessing == preprocessing_hash(model)
    assert all(p.grad is None for p in model.parameters())


def test_from_images_headless_model(tiny_vit, tiny_images) -> None:
    model = _headless(tiny_vit(depth=1))
    concept = Concept.from_images(model, tiny_images(2), "x")
    with torch.no_grad():
        # With num_classes=0 the forward itself returns the pre-logits.
        torch.testing.assert_close(concept.vector, model(tiny_images(2)).mean(0))


def test_from_image_files_uses_the_models_preprocessing(tiny_vit, tmp_path) -> None:
    model = _named(tiny_vit(depth=1))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        p = tmp_path / f"c{i}.png"
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    concept = Concept.from_images(model, paths, "files")
    images = normalize(model, load_images(paths, model)).double()
    torch.testing.assert_close(concept.vector, Concept.from_images(model, images, "t").vector)
    assert concept.n_images == 2


def test_backbone_id_prefers_traitlens_config(tiny_vit) -> None:
    model = _named(tiny_vit(depth=1))
    model.traitlens_config = {"architecture": "vit_small_patch8_224.dino"}
    assert backbone_id(model) == "vit_small_patch8_224.dino"
    assert backbone_id(tiny_vit(depth=1)) is None


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_save_load_round_trip(tiny_vit, tiny_images, tmp_path, suffix) -> None:
    model = _named(tiny_vit(depth=1))
    concept = Concept.from_images(model, tiny_images(2), "violin", similarity="cosine")
    path = concept.save(tmp_path / f"violin{suffix}")
    loaded = Concept.load(path)
    assert torch.equal(loaded.vector, concept.vector) and loaded.vector.dtype == torch.float64
    for attr in ("name", "backbone", "preprocessing", "n_images", "similarity"):
        assert getattr(loaded, attr) == getattr(concept, attr)
    assert not list(tmp_path.glob("*.tmp"))


def test_load_rejects_other_files(tmp_path) -> None:
    from safetensors.torch import save_file

    save_file({"vector": torch.zeros(3)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="not a traitlens concept"):
        Concept.load(tmp_path / "w.safetensors")
    with pytest.raises(FileNotFoundError):
        Concept.load(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="suffix"):
        Concept("a", torch.zeros(3)).save(tmp_path / "a.json")


def test_bad_concepts() -> None:
    with pytest.raises(ValueError, match="similarity"):
        Concept("a", torch.zeros(3), similarity="l2")
    with pytest.raises(ValueError, match="1-D"):
        Concept("a", torch.zeros(2, 3))


# ---------------------------------------------------------------- oracles

@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("c", [0, 2])
def test_concept_of_head_row_equals_class_map(tiny_vit, tiny_images, c, bias) -> None:
    """Oracle (1): with a linear head W, the concept map with v = W[c] is the class-c map."""
    model = tiny_vit(depth=2)
    if not bias:
        with torch.no_grad():
            model.head.bias.zero_()
    images = tiny_images(3)
    concept = Concept(f"row{c}", model.head.weight[c].detach().clone())
    a = explain(model, images, method="cdam", target=concept)
    b = explain(model, images, method="cdam", target=c)
    torch.testing.assert_close(a.patch_maps, b.patch_maps, atol=1e-12, rtol=0)
    assert torch.equal(a.targets, torch.full((3, 1), -1))
    assert a.target_names == [[f"row{c}"]] * 3
    torch.testing.assert_close(a.logits, b.logits)


def test_scaling_the_vector(tiny_vit, tiny_images) -> None:
    """Oracle (2): cosine is invariant to v → 3v; dot scales the map by 3."""
    model = tiny_vit(depth=2)
    images = tiny_images(3)
    v = Concept.from_images(model, tiny_images(2, seed=7), "v").vector
    for sim in ("cosine", "dot"):
        one = explain(model, images, method="cdam", target=Concept("v", v, similarity=sim)).patch_maps
        three = explain(model, images, method="cdam", target=Concept("3v", 3 * v, similarity=sim)).patch_maps
        assert one.abs().max() > 1e-8
        expected = one if sim == "cosine" else 3 * one
        torch.testing.assert_close(three, expected, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("sim", ["dot", "cosine"])
def test_concept_map_equals_full_graph(tiny_vit, tiny_images, sim) -> None:
    """y = ⟨l(x), v⟩ or cos(l(x), v) with l from the full forward; CDAM = Σ_j T·∂y/∂T on patch tokens."""
    model = tiny_vit(depth=2)
    images = tiny_images(2)
    v = torch.randn(model.embed_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with AttentionProbe(model, blocks=[-1], capture=("norm1",)) as probe:
        lat = _latent(model, images)
    y = lat @ v if sim == "dot" else torch.nn.functional.cosine_similarity(lat, v.unsqueeze(0), dim=-1)
    (G,) = torch.autograd.grad(y.sum(), probe.norm1[-1])
    expected = (probe.norm1[-1] * G).sum(-1)[:, 1:].detach()
    got = explain(model, images, method="cdam", target=Concept("v", v, similarity=sim))
    torch.testing.assert_close(got.patch_maps.reshape(2, -1), expected, atol=1e-12, rtol=0)


def test_concept_on_headless_backbone(tiny_vit, tiny_images) -> None:
    model = _headless(tiny_vit(depth=2))
    images = tiny_images(2)
    concept = Concept.from_images(model, tiny_images(2, seed=5), "c")
    exp = explain(model, images, method="cdam", target=concept)
    assert exp.logits is None and exp.patch_maps.shape == (2, 1, 2, 2)
    headed = copy.deepcopy(model)
    headed.reset_classifier(3)
    torch.testing.assert_close(explain(headed, images, method="cdam", target=concept).patch_maps, exp.patch_maps)


# ---------------------------------------------------------------- checks

def test_different_backbone_warns_naming_both(tiny_vit, tiny_images) -> None:
    model = _named(tiny_vit(depth=2), "vit_a.x")
    other = _named(tiny_vit(depth=2, seed=1), "vit_b.y")
    concept = Concept.from_images(model, tiny_images(2), "c")
    with pytest.warns(UserWarning, match=r"vit_a\.x.*vit_b\.y"):
        explain(other, tiny_images(1), method="cdam", target=concept)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explain(model, tiny_images(1), method="cdam", target=concept)


def test_different_preprocessing_warns(tiny_vit, tiny_images) -> None:
    model = _named(tiny_vit(depth=2))
    concept = Concept.from_images(model, tiny_images(2), "c")
    model.pretrained_cfg = dict(model.pretrained_cfg, mean=(0.485, 0.456, 0.406))
    with pytest.warns(UserWarning, match="preprocessing"):
        explain(model, tiny_images(1), method="cdam", target=concept)


def test_wrong_width_is_an_error_naming_the_backbone(tiny_vit, tiny_images) -> None:
    concept = Concept("c", torch.ones(16, dtype=torch.float64), backbone="vit_wide")
    model = tiny_vit(depth=1)
    with pytest.raises(ValueError, match="vit_wide"):
        explain(model, tiny_images(1), method="cdam", target=concept)
    assert all(not m._forward_hooks for m in model.modules())


def test_concept_rejects_other_target_spaces_and_methods(tiny_vit, tiny_images) -> None:
    model = tiny_vit(depth=1)
    concept = Concept("c", torch.ones(8, dtype=torch.float64))
    with pytest.raises(ValueError, match="target_space"):
        explain(model, tiny_images(1), method="cdam", target=concept, target_space="prob")
    with pytest.raises(ValueError, match="Concept"):
        explain(model, tiny_images(1), method="raw_attention", target=concept)


class _Planted:
    """Pickles to a call of os.mkdir: unpickling it would run code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.mkdir, (str(self.marker),))


def _write_cases(tmp_path: Path) -> dict[str, Path]:
    import pickle

    from safetensors.torch import save_file

    marker = tmp_path / "code_ran"
    cases = {
        "garbage.pt": b"not a torch file at all",
        "empty.pt": b"",
        "garbage.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}",
    }
    paths = {}
    for name, data in cases.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    paths["planted_zip.pt"] = tmp_path / "planted_zip.pt"
    torch.save({"vector": _Planted(marker), "meta": {}}, paths["planted_zip.pt"])
    paths["planted_legacy.pt"] = tmp_path / "planted_legacy.pt"
    paths["planted_legacy.pt"].write_bytes(pickle.dumps(_Planted(marker), protocol=2))
    good = tmp_path / "good.pt"
    Concept("a", torch.ones(3)).save(good)
    paths["truncated.pt"] = tmp_path / "truncated.pt"
    paths["truncated.pt"].write_bytes(good.read_bytes()[:200])
    # Plain containers that weights_only accepts but that are no concept.
    for name, blob in {"list_vector.pt": {"vector": [1.0, 2.0], "meta": {"format": "traitlens.concept"}},
                       "meta_not_dict.pt": {"vector": torch.ones(3), "meta": "x"},
                       "int_vector.pt": {"vector": torch.ones(3, dtype=torch.long),
                                         "meta": {"format": "traitlens.concept", "name": "a"}},
                       "no_name.pt": {"vector": torch.ones(3), "meta": {"format": "traitlens.concept"}},
                       "a_tensor.pt": torch.ones(3)}.items():
        paths[name] = tmp_path / name
        torch.save(blob, paths[name])
    save_file({"vector": torch.ones(3)}, str(tmp_path / "bad_meta.safetensors"),
              metadata={"traitlens_concept": "{not json"})
    paths["bad_meta.safetensors"] = tmp_path / "bad_meta.safetensors"
    return paths


def test_load_refuses_corrupt_and_foreign_files_in_one_line_without_running_code(tmp_path) -> None:
    """Corrupt files, pickles of other objects and wrong contents are one ConceptLoadError naming the file."""
    from traitlens.explain import ConceptLoadError

    paths = _write_cases(tmp_path)
    for name, path in paths.items():
        with pytest.raises(ConceptLoadError) as info:
            Concept.load(path)
        message = str(info.value)
        assert isinstance(info.value, ValueError)
        assert str(path) in message and "not a traitlens concept file" in message, name
        assert "written by Concept.save" in message and "\n" not in message, (name, message)
    assert not (tmp_path / "code_ran").exists()
    assert Concept.load(tmp_path / "good.pt").name == "a"  # the good file next to them still loads
