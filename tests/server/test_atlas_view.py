"""The atlas view of `traitlens serve`: the JSON routes (TestClient), finding an atlas next to a model, and the page
in headless Chromium (skipped without playwright or a Chromium binary)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server tests need the 'web' extra (fastapi, python-multipart)")

from fastapi.testclient import TestClient

from traitlens.backbones import load_model, save_model
from traitlens.evaluation import Atlas, atlas
from traitlens.server import ServerLimits, create_app
from traitlens.server.atlas_view import find_atlases, load_atlases

from .helpers import (
    CHROMIUM_ARGS,
    chromium_path,
    collect_errors,
    decode_data_url,
    free_port,
    uvicorn_in_thread,
)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> tuple[Path, Path, Atlas]:
    """(model folder, atlas folder next to it, the atlas): a micro ViT's atlas on 12 TraitShapes images."""
    from tests.evaluation.conftest import make_setup

    model, data = make_setup(n=12, num_classes=4)
    root = tmp_path_factory.mktemp("run")
    model_dir = save_model(model, root / "run" / "best")
    res = atlas(model, data, "cdam", root / "atlas", batch_size=6, progress=False)
    return model_dir, root / "atlas", res


@pytest.fixture(scope="module")
def client(served):
    model_dir, folder, _ = served
    app = create_app({"micro": load_model(model_dir)}, ServerLimits(workers=1), atlases=load_atlases([folder]))
    with TestClient(app) as c:
        yield c


def test_atlas_routes(client, served):
    _, _, res = served
    listing = client.get("/api/atlases").json()
    assert [a["name"] for a in listing] == ["atlas"] and listing[0]["n_classes"] == 4
    body = client.get("/api/atlases/atlas").json()
    assert [c["index"] for c in body["classes"]] == [0, 1, 2, 3]
    assert body["hit_fraction"] == pytest.approx(res.hit_fraction)
    c = next(c for c in res.classes if c.exemplars)
    detail = client.get(f"/api/atlases/atlas/classes/{c.index}").json()
    assert detail["shares"]["head"] == pytest.approx(c.shares["head"], abs=1e-6)
    assert len(detail["exemplars"]) == len(c.exemplars)
    assert decode_data_url(detail["exemplars"][0]["map"]).size == (32, 32)
    pair = c.confused[0]
    got = client.get(f"/api/atlases/atlas/pairs/{c.index}/{pair.other}").json()
    assert (got["count"], got["n_contrast"], got["expected"]) == (pair.count, pair.n_contrast, pair.expected)
    assert len(got["maps"]) == len(c.exemplars)
    assert client.get("/atlas").headers["content-type"].startswith("text/html")


def test_atlas_refusals(client, served, tmp_path):
    assert client.get("/api/atlases/nope").status_code == 404
    assert client.get("/api/atlases/atlas/classes/9").status_code == 404
    c = served[2].classes[0]
    missing = next(i for i in range(4) if i != c.index and i not in [p.other for p in c.confused])
    r = client.get(f"/api/atlases/atlas/pairs/{c.index}/{missing}")
    assert r.status_code == 404 and "not among the confused classes" in r.json()["detail"]
    # An atlas.json edited to point outside its folder is not followed.
    copy = tmp_path / "edited"
    shutil.copytree(served[1], copy)
    doc = json.loads((copy / "atlas.json").read_text())
    klass = next(k for k in doc["classes"] if k["exemplars"])
    klass["exemplars"][0]["files"]["map"] = "../../etc/passwd"
    (copy / "atlas.json").write_text(json.dumps(doc))
    with TestClient(create_app({"m": load_model(served[0])}, atlases=load_atlases([copy]))) as other:
        r = other.get(f"/api/atlases/edited/classes/{klass['index']}")
        assert r.status_code == 404 and "missing" in r.json()["detail"]
    with pytest.raises(FileNotFoundError, match="no atlas"):
        load_atlases([tmp_path])


def test_an_atlas_next_to_a_model_is_found(served, tmp_path):
    model_dir, folder, _ = served
    model = load_model(model_dir)
    assert find_atlases(model_dir, model) == [folder.resolve()]
    from tests.evaluation.conftest import make_setup

    other, _ = make_setup(n=2, num_classes=3)  # another model's folder beside the same atlas: not its atlas
    lone = save_model(other, folder.parent / "other")
    assert find_atlases(lone, other) == []
    from traitlens.server import _served_atlases

    found = _served_atlases([folder], [model_dir, model_dir], {"best": model})
    assert list(found) == ["atlas"]  # given and found: the same folder once


def test_atlas_page_in_chromium(served):
    uvicorn = pytest.importorskip("uvicorn", reason="the browser test needs uvicorn (the 'web' extra)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs the 'playwright' package")

    exe = chromium_path()
    if exe is None:
        pytest.skip("no Chromium binary (apt-get install chromium, or set TRAITLENS_CHROMIUM)")
    model_dir, folder, res = served
    app = create_app({"micro": load_model(model_dir)}, ServerLimits(workers=1), atlases=load_atlases([folder]))
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    with uvicorn_in_thread(config), sync_api.sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        context = pw.chromium.launch_persistent_context(profile, executable_path=exe, headless=True,
                                                        args=CHROMIUM_ARGS)
        page = context.new_page()
        page.set_default_timeout(30_000)
        errors = collect_errors(page)
        page.goto(f"http://127.0.0.1:{port}/atlas")
        page.wait_for_selector("#atlas-state.ok")
        page.wait_for_selector("#atlas-classes tr.class-row")
        names = page.eval_on_selector_all("#atlas-classes tr.class-row td:first-child", "els => els.map(e => "
                                          "e.textContent)")
        assert names == [c.name for c in res.classes]
        c = next(c for c in res.classes if c.exemplars)
        page.click(f"#atlas-classes tr.class-row[data-index='{c.index}'] button")
        page.locator("#class-title", has_text=c.name).wait_for()
        assert page.locator("#class-exemplars img").count() == 2 * len(c.exemplars)
        pair = c.confused[0]
        page.click(f"#class-pairs button:text-is('Why {c.name}, not {pair.other_name}')")
        page.locator("#pair-title", has_text=f"not {pair.other_name}").wait_for()
        assert page.locator("#pair-maps img").count() == len(c.exemplars)
        assert f"class={c.index}&pair={pair.other}" in page.url
        page.reload()  # the hash reopens the pair
        page.locator("#pair-title", has_text=f"not {pair.other_name}").wait_for()
        assert errors == []
        context.close()
