"""Example images to click: a samples folder (with its labels), TraitShapes renders, scikit-image's photos."""

from __future__ import annotations

import importlib.util
import json

import pytest

pytest.importorskip("fastapi", reason="the server tests need the 'web' extra (fastapi, python-multipart)")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

from traitlens.data.traitshapes import TraitShapesConfig, class_names
from traitlens.server.examples import MAX_EXAMPLES, sample_folders

from .helpers import png_bytes

HAS_SKIMAGE = importlib.util.find_spec("skimage") is not None


def test_a_samples_folder_comes_first_with_its_labels(make_client, micro_model, tmp_path):
    folder = tmp_path / "samples"
    folder.mkdir()
    (folder / "square_0.png").write_bytes(png_bytes(40, 30, seed=1))
    (folder / "circle_1.jpg").write_bytes(png_bytes(20, 20, seed=2, fmt="JPEG"))
    (folder / "notes.png").write_bytes(b"not an image at all")
    (folder / "huge.png").write_bytes(png_bytes(64, 64, seed=3))
    (folder / "labels.json").write_text(json.dumps({"square_0.png": "square", "circle_1.jpg": "circle"}))
    client = make_client(models={"micro": micro_model}, max_upload_bytes=len(png_bytes(64, 64, seed=3)) - 1)
    client.app.state.server.example_folders = [folder]
    listed = client.get("/api/examples").json()
    first = listed[:2]
    assert [e["name"] for e in first] == ["circle_1", "square_0"]  # sorted; the text file and the big one skipped
    assert [e["label"] for e in first] == ["circle", "square"]
    assert [(e["width"], e["height"]) for e in first] == [(20, 20), (40, 30)]
    assert all("samples folder" in e["source"] for e in first)
    got = client.get(first[1]["url"])
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    assert got.content == (folder / "square_0.png").read_bytes()
    assert client.get(first[0]["url"]).headers["content-type"] == "image/jpeg"
    assert not any(e["name"] in ("notes", "huge") for e in listed)
    assert len(listed) <= MAX_EXAMPLES


def test_built_in_examples_are_traitshapes_then_scikit_image(make_client):
    client = make_client()
    listed = client.get("/api/examples").json()
    shapes = [e for e in listed if e["source"].startswith("TraitShapes")]
    assert len(shapes) == 3
    # Labelled with the quickstart's class names (8 classes, seed 0).
    names = class_names(TraitShapesConfig(size=64, num_classes=8, seed=0))
    assert [e["label"] for e in shapes] == [names[0], names[3], names[6]]
    assert all((e["width"], e["height"]) == (128, 128) for e in shapes)
    photos = [e["name"] for e in listed if e["source"] == "scikit-image"]
    assert photos == (["cat (Chelsea)", "coffee cup", "rocket"] if HAS_SKIMAGE else [])
    # An example explains like an upload.
    data = client.get(shapes[0]["url"]).content
    r = client.post("/api/explain", files={"image": ("x.png", data, "image/png")}, data={"method": "cdam"})
    assert r.status_code == 200, r.text
    assert r.json()["overlay_size"] == {"width": 320, "height": 320}
    missing = client.get("/api/examples/nope")
    assert missing.status_code == 404 and "/api/examples" in missing.json()["detail"]


def test_the_quickstart_samples_are_found_next_to_its_model(tmp_path):
    best = tmp_path / "traitlens-quickstart" / "run" / "best"
    best.mkdir(parents=True)
    (tmp_path / "traitlens-quickstart" / "samples").mkdir()
    own = tmp_path / "mine"
    (own / "samples").mkdir(parents=True)
    found = sample_folders([best, own, "traitlens-vit-micro", best])
    assert found == [(tmp_path / "traitlens-quickstart" / "samples").resolve(), (own / "samples").resolve()]
    assert sample_folders([tmp_path / "nothing-here"]) == []
