"""Concepts from sample images: stored server-side under an id, explained with target=concept:<id>."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("fastapi", reason="the server tests need the 'web' extra (fastapi, python-multipart)")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

import traitlens.server.service as server_app
from traitlens.explain import explain

from .helpers import model_input, png_bytes


@pytest.fixture
def concept_cls():
    """The Concept class; tests of the working feature skip where this traitlens has none."""
    if server_app.concept_class() is None:
        pytest.skip("traitlens.explain._concept.Concept is not available")
    return server_app.concept_class()


def make_concept(client, name: str = "noisy", seeds=(1, 2, 3), model: str | None = None):
    files = [("images", (f"{s}.png", png_bytes(seed=s), "image/png")) for s in seeds]
    data = {"name": name} | ({"model": model} if model else {})
    return client.post("/api/concept", files=files, data=data)


def test_concept_round_trip_matches_a_direct_concept(make_client, micro_model, concept_cls):
    client = make_client()
    r = make_concept(client)
    assert r.status_code == 200, r.text
    made = r.json()
    assert made["name"] == "noisy" and made["n_images"] == 3 and made["model"] == "micro"
    assert made["dim"] == micro_model.num_features
    assert [c["id"] for c in client.get("/api/concepts").json()] == [made["id"]]
    assert client.get("/api/info").json()["concepts"][0]["id"] == made["id"]

    data = png_bytes(seed=9)
    r = client.post("/api/explain", files={"image": ("x.png", data, "image/png")},
                    data={"method": "cdam", "target": f"concept:{made['id']}", "include_raw": "true"})
    assert r.status_code == 200, r.text
    (target,) = r.json()["targets"]
    assert target["name"] == "noisy" and target["index"] is None and target["prob"] is None
    samples = torch.cat([model_input(micro_model, png_bytes(seed=s)) for s in (1, 2, 3)])
    ref = explain(micro_model, model_input(micro_model, data), method="cdam",
                  target=concept_cls.from_images(micro_model, samples, "noisy"))
    assert torch.tensor(target["raw"]) == pytest.approx(ref.patch_maps[0, 0], abs=1e-5)


def test_concept_as_contrast(make_client, concept_cls):
    client = make_client()
    cid = make_concept(client).json()["id"]
    r = client.post("/api/explain", files={"image": ("x.png", png_bytes(), "image/png")},
                    data={"method": "cdam", "target": "square", "contrast": f"concept:{cid}"})
    assert r.status_code == 200, r.text
    assert (r.json()["contrast"]["a"], r.json()["contrast"]["b"]) == ("square", "noisy")


def test_concept_needs_a_concept_capable_method(make_client, concept_cls):
    client = make_client()
    cid = make_concept(client).json()["id"]
    r = client.post("/api/explain", files={"image": ("x.png", png_bytes(), "image/png")},
                    data={"method": "rollout", "target": f"concept:{cid}"})
    assert r.status_code == 400
    assert "rollout" in r.json()["detail"] and "cdam" in r.json()["detail"]


def test_concept_belongs_to_its_model(make_client, micro_model, concept_cls):
    from traitlens.backbones import create_preset

    client = make_client(models={"micro": micro_model, "other": create_preset("traitlens-vit-micro", 3)})
    cid = make_concept(client, model="other").json()["id"]
    r = client.post("/api/explain", files={"image": ("x.png", png_bytes(), "image/png")},
                    data={"model": "micro", "target": f"concept:{cid}"})
    assert r.status_code == 400 and "other" in r.json()["detail"]


def test_concept_refusals(make_client, concept_cls):
    client = make_client(max_concept_images=2, max_upload_bytes=20_000)
    assert make_concept(client, seeds=(1, 2, 3)).status_code == 400
    assert make_concept(client, name="   ").status_code == 400
    bad = client.post("/api/concept", files=[("images", ("a.png", png_bytes(), "image/png")),
                                             ("images", ("b.png", b"not an image", "image/png"))],
                      data={"name": "x"})
    assert bad.status_code == 415 and "image 2" in bad.json()["detail"]
    assert make_concept(client, model="nope").status_code == 404
    assert client.delete("/api/concepts/nope").status_code == 404


def test_concepts_are_bounded_and_deletable(make_client, concept_cls):
    client = make_client(max_concepts=2)
    ids = [make_concept(client, name=f"c{i}", seeds=(i,)).json()["id"] for i in range(3)]
    assert [c["id"] for c in client.get("/api/concepts").json()] == ids[1:]  # the oldest was dropped
    assert client.delete(f"/api/concepts/{ids[1]}").status_code == 204
    assert [c["id"] for c in client.get("/api/concepts").json()] == ids[2:]
    r = client.post("/api/explain", files={"image": ("x.png", png_bytes(), "image/png")},
                    data={"target": f"concept:{ids[0]}"})
    assert r.status_code == 404


def test_without_the_concept_class_the_feature_answers_501(make_client, monkeypatch):
    monkeypatch.setattr(server_app, "concept_class", lambda: None)
    client = make_client()
    assert client.get("/api/info").json()["concepts_available"] is False
    r = make_concept(client)
    assert r.status_code == 501 and "Concept" in r.json()["detail"]
    r = client.post("/api/explain", files={"image": ("x.png", png_bytes(), "image/png")},
                    data={"target": "concept:abc"})
    assert r.status_code == 501
