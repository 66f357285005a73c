"""The maps the page shows: one colour scale per request (same colour = same value), heat layers, downloads."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="the server tests need the 'web' extra (fastapi, python-multipart)")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

from traitlens.explain import Explanation, explain
from traitlens.server._render import ALPHA, blend, heat_rgb, map_scale, resize_map, to_uint8
from traitlens.viz.overlay import SEQUENTIAL_CMAP, SIGNED_CMAP, colorize, overlay

from .helpers import decode_data_url, model_input, png_bytes


def post_explain(client, data: bytes, **form):
    return client.post("/api/explain", files={"image": ("upload.png", data, "image/png")}, data=form)


def pixels(url: str) -> np.ndarray:
    return np.asarray(decode_data_url(url).convert("RGB"), dtype=np.int16)


def test_one_scale_for_several_maps_by_hand():
    a = torch.tensor([[0.0, 1.0], [0.5, 0.25]])
    b = torch.tensor([[0.0, 0.5], [0.25, 0.0]])
    s = map_scale(torch.stack([a, b]), signed=False)
    assert (s.lo, s.hi, s.vmin, s.vmax) == (0.0, 1.0, 0.0, 1.0)
    # b's largest value is half the shared range: it gets the colour of 0.5, not the top of the map.
    rgb = heat_rgb(b.numpy(), s)
    assert np.allclose(rgb[0, 1], SEQUENTIAL_CMAP(0.5)[:3]) and np.allclose(rgb[1, 0], SEQUENTIAL_CMAP(0.25)[:3])
    # Signed: [-max|v|, max|v|], 0 in the middle (black), whatever the values' own range.
    signed = map_scale(torch.tensor([[-0.2, 0.8]]), signed=True)
    assert (signed.lo, signed.hi, signed.vmin, signed.vmax) == pytest.approx((-0.8, 0.8, -0.2, 0.8))
    assert np.allclose(heat_rgb(np.array([[0.0, -0.8]]), signed), [[SIGNED_CMAP(0.5)[:3], SIGNED_CMAP(0.0)[:3]]])
    # One map alone: the viz layer's own colours (its per-map scaling is this scale).
    for m, sgn in ((a, False), (torch.tensor([[-0.3, 0.1], [0.2, 0.0]]), True)):
        assert np.allclose(heat_rgb(m.numpy(), map_scale(m, sgn)), colorize(m, sgn))


def test_blend_is_the_viz_overlay():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    m = torch.from_numpy(rng.normal(size=(6, 5)).astype(np.float32))
    heat = to_uint8(heat_rgb(resize_map(m, 6, 5), map_scale(m, True)))
    assert np.abs(blend(image, heat).astype(int) - overlay(image, m, signed=True, alpha=ALPHA).astype(int)).max() <= 1


def test_topk_maps_share_one_scale_of_raw_values(make_client, micro_model):
    data = png_bytes(80, 60, seed=9)
    body = post_explain(make_client(), data, method="gradcam_vit", target="topk:3").json()
    ref = explain(micro_model, model_input(micro_model, data), method="gradcam_vit", target="topk:3",
                  normalize="none")
    maps = ref.maps[0]
    scale = body["scale"]
    # The bar's numbers are the values' own range over all three maps (raw: gradcam_vit normalises by default).
    assert scale["signed"] is False
    assert (scale["min"], scale["max"]) == pytest.approx((float(maps.min()), float(maps.max())), abs=1e-5)
    assert (scale["lo"], scale["hi"]) == (scale["min"], scale["max"])
    per_map_max = maps.flatten(1).max(1).values
    assert float(per_map_max.min()) < 0.9 * float(per_map_max.max())  # the maps differ: a shared scale shows it
    shown = np.asarray(decode_data_url(body["image"]))
    top = SEQUENTIAL_CMAP(1.0)[:3]
    for k, t in enumerate(body["targets"]):
        heat = pixels(t["heat"])
        # Each heat layer is its map resized onto the display image and coloured on the shared scale.
        want = to_uint8(heat_rgb(resize_map(maps[k], *shown.shape[:2]), map_scale(maps, False)))
        assert np.abs(heat - want).max() <= 1
        # Same colour, same value: only maps reaching the shared maximum come near the top colour.
        nearest = np.abs(heat / 255.0 - top).sum(-1).min()
        reaches = float(per_map_max[k]) > float(maps.max()) - 0.02 * (float(maps.max()) - float(maps.min()))
        assert (nearest < 0.1) == reaches
        # The overlay is that heat layer on the image at the default opacity.
        assert np.abs(pixels(t["overlay"]) - blend(shown, heat.astype(np.uint8))).max() <= 1


def test_heads_share_one_scale_and_contrast_has_its_own(make_client, micro_model):
    data = png_bytes(seed=4)
    client = make_client()
    body = post_explain(client, data, method="raw_attention", target="topk:2").json()
    ref = explain(micro_model, model_input(micro_model, data), method="raw_attention", target="topk:2",
                  normalize="none")
    hs = body["head_scale"]
    assert (hs["min"], hs["max"]) == pytest.approx((float(ref.head_maps.min()), float(ref.head_maps.max())), abs=1e-6)
    c = post_explain(client, data, method="cdam", target="circle", contrast="square").json()["contrast"]
    assert c["scale"]["signed"] is True
    assert (c["scale"]["lo"], c["scale"]["hi"]) == pytest.approx((-c["max_abs"], c["max_abs"]))


def test_npz_download_is_the_shown_explanation(make_client, micro_model, tmp_path):
    data = png_bytes(seed=2)
    client = make_client(max_results=1)
    body = post_explain(client, data, method="cdam", target="topk:2").json()
    r = client.get(body["download"])
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    assert 'filename="micro_cdam.npz"' in r.headers["content-disposition"]
    with np.load(io.BytesIO(r.content), allow_pickle=False) as z:  # a plain npz: nothing to unpickle
        assert {"maps", "patch_maps", "targets"} <= set(z.files)
    path = tmp_path / "download.npz"
    path.write_bytes(r.content)
    exp = Explanation.load(path)
    ref = explain(micro_model, model_input(micro_model, data), method="cdam", target="topk:2", normalize="none")
    assert torch.allclose(exp.maps, ref.maps, atol=1e-5) and torch.equal(exp.targets, ref.targets)
    assert exp.method == "cdam" and exp.signed is True
    assert Explanation.read_meta(path)["model"] == "micro"
    # Only the last max_results explanations are kept; an old or made-up id is a 404 saying what to do.
    second = post_explain(client, data, method="rollout").json()
    assert client.get(second["download"]).status_code == 200
    gone = client.get(body["download"])
    assert gone.status_code == 404 and "explain the image again" in gone.json()["detail"]
    assert client.get("/api/results/nope.npz").status_code == 404
