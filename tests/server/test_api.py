"""The JSON API on its happy paths: info from the registry, explanations checked against direct `explain` calls."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("fastapi", reason="the server tests need the 'web' extra (fastapi, python-multipart)")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

from traitlens.explain import explain, list_methods
from traitlens.server.app import model_family

from .helpers import CLASS_NAMES, decode_data_url, model_input, png_bytes

VIT_METHODS = [m.name for m in list_methods(family="vit")]


def post_explain(client, data: bytes, **form):
    return client.post("/api/explain", files={"image": ("upload.png", data, "image/png")}, data=form)


def test_info_reads_the_registry(make_client, micro_model):
    info = make_client().get("/api/info").json()
    registry = {m.name: m for m in list_methods()}
    assert [m["name"] for m in info["methods"]] == sorted(registry)
    for m in info["methods"]:
        ref = registry[m["name"]]
        assert (m["signed"], m["class_specific"], m["needs_grad"], m["concept"]) == (
            ref.signed, ref.class_specific, ref.needs_grad, ref.concept)
        assert m["families"] == list(ref.families)
    (model,) = info["models"]
    assert model["name"] == info["default_model"] == "micro"
    assert model["architecture"] == type(micro_model).__name__ == "VisionTransformer"
    assert model["class_names"] == CLASS_NAMES and model["num_classes"] == 3
    assert model["input_size"] == [32, 32]
    assert model["family"] == model_family(micro_model) == "vit"
    assert model["methods"] == [m.name for m in list_methods(family="vit")]
    assert info["limits"]["workers"] >= 1


def test_explain_top1_matches_the_model(make_client, micro_model):
    data = png_bytes(80, 60)
    r = post_explain(make_client(), data, method="cdam", include_raw="true")
    assert r.status_code == 200, r.text
    body = r.json()
    x = model_input(micro_model, data)
    with torch.no_grad():
        probs = micro_model(x).softmax(-1)[0]
    top = int(probs.argmax())
    assert body["predictions"][0]["index"] == top
    assert body["predictions"][0]["name"] == CLASS_NAMES[top]
    assert body["predictions"][0]["prob"] == pytest.approx(float(probs[top]), abs=1e-5)
    assert [p["prob"] for p in body["predictions"]] == sorted((p["prob"] for p in body["predictions"]), reverse=True)
    (target,) = body["targets"]
    assert target["index"] == top and target["name"] == CLASS_NAMES[top]
    assert body["map_shape"] == [1, 1, 32, 32] and body["patch_map_shape"] == [1, 1, 4, 4]
    assert body["signed"] is True and body["head_maps_shape"] is None and target["heads"] is None
    # The overlay is a PNG at the display size, in the upload's aspect ratio (80×60 → 320×240).
    assert body["overlay_size"] == {"width": 320, "height": 240}
    img = decode_data_url(target["overlay"])
    assert img.size == (320, 240) and img.mode == "RGB"
    ref = explain(micro_model, x, method="cdam", target=top)
    assert torch.tensor(target["raw"]) == pytest.approx(ref.patch_maps[0, 0], abs=1e-5)


@pytest.mark.parametrize("method", VIT_METHODS)
def test_every_registered_vit_method_runs_through_the_api(make_client, method):
    r = post_explain(make_client(), png_bytes(48, 48, seed=3), method=method, target="topk:2")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["method"] == method
    assert len(body["targets"]) == 2
    for t in body["targets"]:
        assert decode_data_url(t["overlay"]).size == (320, 320)
    if body["head_maps_shape"] is not None:
        assert all(len(t["heads"]) == body["head_maps_shape"][2] for t in body["targets"])


def test_topk_class_index_and_class_name_targets(make_client, micro_model):
    client, data = make_client(), png_bytes(seed=5)
    with torch.no_grad():
        ranking = micro_model(model_input(micro_model, data))[0].argsort(descending=True).tolist()
    body = post_explain(client, data, method="cdam", target="topk:3").json()
    assert [t["index"] for t in body["targets"]] == ranking
    assert [t["name"] for t in body["targets"]] == [CLASS_NAMES[i] for i in ranking]
    assert post_explain(client, data, target="2").json()["targets"][0]["name"] == "triangle"
    assert post_explain(client, data, target="square").json()["targets"][0]["index"] == 1


def test_head_maps_become_one_overlay_per_head(make_client):
    body = post_explain(make_client(), png_bytes(), method="raw_attention").json()
    b, k, r, h, w = body["head_maps_shape"]
    assert (b, k, r, h, w) == (1, 1, 2, 4, 4)  # micro: 2 heads on a 4×4 grid
    heads, heats = body["targets"][0]["heads"], body["targets"][0]["head_heat"]
    assert len(heads) == len(heats) == r
    # On the image at the heads' display size (longest side 96, the upload's 80×60 aspect), not bare grids.
    assert {decode_data_url(u).size for u in [*heads, *heats, body["head_image"]]} == {(96, 72)}


def test_head_maps_are_capped(make_client):
    body = post_explain(make_client(max_heads=1), png_bytes(), method="raw_attention").json()
    assert len(body["targets"][0]["heads"]) == 1


def test_contrast_is_the_raw_map_of_a_minus_b(make_client, micro_model):
    data = png_bytes(seed=7)
    r = post_explain(make_client(), data, method="cdam", target="circle", contrast="triangle", include_raw="true")
    assert r.status_code == 200, r.text
    c = r.json()["contrast"]
    assert (c["a"], c["b"]) == ("circle", "triangle")
    x = model_input(micro_model, data)
    diff = explain(micro_model, x, "cdam", target=0).patch_maps[0, 0] - explain(micro_model, x, "cdam",
                                                                                 target=2).patch_maps[0, 0]
    assert torch.tensor(c["raw"]) == pytest.approx(diff, abs=1e-5)
    assert c["max_abs"] == pytest.approx(float(diff.abs().max()), rel=1e-4)
    assert c["max_abs"] > 0
    assert decode_data_url(c["overlay"]).size == (320, 240)


def test_contrast_refusals(make_client):
    client, data = make_client(), png_bytes()
    same = post_explain(client, data, method="cdam", target="square", contrast="1")
    assert same.status_code == 400 and "square" in same.json()["detail"]
    agnostic = post_explain(client, data, method="rollout", contrast="square")
    assert agnostic.status_code == 400 and "rollout" in agnostic.json()["detail"]
    topk = post_explain(client, data, method="cdam", contrast="topk:2")
    assert topk.status_code == 400 and "topk" in topk.json()["detail"]


def test_two_models_are_chosen_by_name(make_client, micro_model):
    from traitlens.backbones import create_preset

    other = create_preset("traitlens-vit-micro", 5, class_names=list("abcde")).eval()
    client = make_client(models={"micro": micro_model, "five": other})
    info = client.get("/api/info").json()
    assert [m["name"] for m in info["models"]] == ["micro", "five"]
    body = post_explain(client, png_bytes(), model="five", method="rollout").json()
    assert body["model"] == "five" and len(body["predictions"]) == 5
    assert body["predictions"][0]["name"] in list("abcde")


def test_page_and_static_files_are_served_with_a_strict_policy(make_client):
    client = make_client()
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for needle in ('id="image"', 'id="method"', 'id="explain-btn"', 'src="/static/app.js"'):
        assert needle in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200
    api = client.get("/api/health")
    assert api.headers["x-content-type-options"] == "nosniff"
    assert api.json() == {"status": "ok", "in_flight": 0, "capacity": api.json()["capacity"]}


def test_openapi_documents_the_api(make_client):
    schema = make_client().get("/openapi.json").json()
    assert {"/api/info", "/api/explain", "/api/concept", "/api/concepts", "/api/health"} <= set(schema["paths"])
    responses = schema["paths"]["/api/explain"]["post"]["responses"]
    assert {"200", "400", "404", "413", "415", "422", "503", "504"} <= set(responses)


def test_amp_runs_the_amp_safe_methods_and_says_so(make_client, micro_model, monkeypatch):
    """`serve --amp`: amp-safe methods run under autocast (bfloat16 here: the CPU is told it has bf16 units) within
    their tolerance of the float32 map; an amp-unsafe method still answers, in float32, and says so."""
    from traitlens.explain import _amp, get_method

    monkeypatch.setattr(_amp, "cpu_has_bf16", lambda: True)
    data = png_bytes(80, 60)
    fp32 = post_explain(make_client(), data, method="cdam", target="0", include_raw="true").json()
    client = make_client(amp=True)
    half = post_explain(client, data, method="cdam", target="0", include_raw="true").json()
    assert fp32["amp"] is None and half["amp"] == "bfloat16"
    a, b = torch.tensor(fp32["targets"][0]["raw"]), torch.tensor(half["targets"][0]["raw"])
    assert float((a - b).abs().max() / (a.max() - a.min())) <= get_method("cdam").amp_tolerance
    unsafe = post_explain(client, data, method="lrp", target="0")
    assert unsafe.status_code == 200 and unsafe.json()["amp"] is None
