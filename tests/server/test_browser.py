"""End to end: a real uvicorn server and the page driven in headless Chromium (Playwright, system browser).

Skipped only where the driver package (playwright) or a Chromium binary is absent. Playwright's own browser
downloads are never used: the test launches the system Chromium (`apt-get install chromium`), or the binary
named by TRAITLENS_CHROMIUM.
"""

from __future__ import annotations

import base64
import re
import tempfile
from collections.abc import Iterator

import pytest

pytest.importorskip("fastapi", reason="the server tests need the 'web' extra (fastapi, python-multipart)")
uvicorn = pytest.importorskip("uvicorn", reason="the browser test needs uvicorn (the 'web' extra)")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs the 'playwright' package")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from traitlens.backbones import load_model  # noqa: E402
from traitlens.explain import Explanation, explain  # noqa: E402
from traitlens.server import ServerLimits, create_app  # noqa: E402

from .helpers import (  # noqa: E402
    CHROMIUM_ARGS,
    TinyConv,
    chromium_path,
    collect_errors,
    decode_data_url,
    free_port,
    model_input,
    png_bytes,
    uvicorn_in_thread,
)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict:
    """The models the live server serves: a micro ViT (3 classes) and a 2-class logits-only CNN stub."""
    import torch

    from traitlens.backbones import create_preset, save_model

    torch.manual_seed(0)
    model = create_preset("traitlens-vit-micro", 3, class_names=["circle", "square", "triangle"])
    torch.nn.init.normal_(model.head.weight, std=0.5)
    path = save_model(model, tmp_path_factory.mktemp("e2e") / "micro")
    return {"micro": load_model(path), "conv": TinyConv()}


@pytest.fixture(scope="module")
def live_server(served) -> Iterator[str]:
    """uvicorn serving the models in a thread on a free loopback port; yields the base URL."""
    app = create_app(dict(served), ServerLimits(workers=1, queue_size=4))
    port = free_port()
    with uvicorn_in_thread(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def browser_page(live_server):
    """A fresh headless Chromium profile with one page; console errors and page errors are collected."""
    exe = chromium_path()
    if exe is None:
        pytest.skip("no Chromium binary (apt-get install chromium, or set TRAITLENS_CHROMIUM)")
    with sync_api.sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        context = pw.chromium.launch_persistent_context(profile, executable_path=exe, headless=True,
                                                        args=CHROMIUM_ARGS, accept_downloads=True,
                                                        viewport={"width": 1400, "height": 1000})
        try:
            pg = context.new_page()
            pg.set_default_timeout(60_000)
            pg.errors = collect_errors(pg)
            yield pg
        finally:
            context.close()


@pytest.fixture
def page(browser_page, live_server):
    """The page, freshly loaded; at the end of each test, no console or page error was seen (unless the test
    expected the one a refused request logs and cleared the list)."""
    browser_page.errors.clear()
    browser_page.goto(live_server + "/")
    browser_page.wait_for_selector("#server-state.ok")
    yield browser_page
    assert browser_page.errors == []


def idle(page) -> None:
    """Wait until the page has no request in flight (its status line is empty)."""
    page.locator("#status:empty").wait_for(state="attached")


def methods_offered(page) -> list[str]:
    return page.eval_on_selector_all("#method option", "els => els.map(e => e.value)")


def test_upload_choose_method_and_see_the_maps_on_the_image(page, tmp_path):
    image = tmp_path / "bird.png"
    image.write_bytes(png_bytes(80, 60, seed=4))
    # Models are labelled by their served names (never a path), with what they are.
    labels = page.eval_on_selector_all("#model option", "els => els.map(e => [e.value, e.textContent])")
    assert labels == [["micro", "micro — VisionTransformer, 3 classes"], ["conv", "conv — TinyConv, 2 classes"]]
    assert "raw_attention" in methods_offered(page) and "cdam" in methods_offered(page)
    page.set_input_files("#image", str(image))
    idle(page)
    page.select_option("#method", "raw_attention")
    assert page.is_disabled("#contrast")  # raw_attention is class-agnostic: no "why A, not B"
    page.click("#explain-btn")
    # Selectors, not wait_for_function: the page's CSP forbids the string evaluation that would need.
    page.locator("#method-name", has_text="raw_attention on micro").wait_for()
    idle(page)
    # The map is a heat layer over the image (both at the display size, the upload's 4:3 aspect).
    base = decode_data_url(page.get_attribute("#maps .layered img.base", "src"))
    heat = decode_data_url(page.get_attribute("#maps .layered img.heat", "src"))
    assert base.size == heat.size == (320, 240)
    shown = page.eval_on_selector("#maps img.heat", "img => [img.naturalWidth, img.naturalHeight]")
    assert shown == [320, 240]
    # raw_attention has per-head maps: the micro model's two heads, each overlaid on the image, one colour bar.
    assert page.is_visible("#heads-panel")
    assert page.locator("#heads .layered.head img.base").count() == 2
    assert page.locator("#heads .layered.head img.heat").count() == 2
    assert page.locator("#heads-bar .colorbar .tick").count() >= 2
    assert page.locator("#predictions li").count() == 3
    # Dropping a file on the drop zone explains it too.
    data = base64.b64encode(png_bytes(50, 50, seed=8)).decode()
    transfer = page.evaluate_handle("""(b64) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
        return dt;
    }""", data)
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    page.locator("#drop-text", has_text="dropped.png").wait_for()
    idle(page)
    assert decode_data_url(page.get_attribute("#maps img.heat", "src")).size == (320, 320)


def test_examples_side_by_side_colour_bars_opacity_and_downloads(page, served, tmp_path):
    page.wait_for_selector("#examples button.example")
    assert page.locator("#examples button.example").count() >= 3
    page.select_option("#method", "cdam")
    page.select_option("#target-kind", "topk")
    page.fill("#topk", "2")
    page.check("#compare-gradcam")
    page.check("#compare-raw_attention")
    assert page.is_disabled("#compare-gae")  # at most two more methods
    with page.expect_response(lambda r: r.url.endswith("/api/explain")) as first:
        page.click("#examples button.example >> nth=0")  # a TraitShapes render
    body = first.value.json()
    page.locator("#maps .method-col").nth(2).wait_for()
    idle(page)
    # Side by side: one column per method, in order, each with the same two targets.
    cols = page.eval_on_selector_all("#maps .method-col", "els => els.map(e => e.dataset.method)")
    assert cols == ["cdam", "gradcam", "raw_attention"]
    captions = page.eval_on_selector_all(
        "#maps .method-col", "els => els.map(c => [...c.querySelectorAll('figcaption')].map(f => f.textContent))")
    names = [[c.split(" (")[0] for c in col] for col in captions]  # "(constant map)" may follow a name
    assert len(names[0]) == 2 and names[1] == names[0] == names[2]
    assert captions[0][0].startswith(body["targets"][0]["name"])
    # The colour bar of the cdam column has the numbers of the response's shared scale: -s, 0, s.
    ticks = page.eval_on_selector_all('#maps .method-col[data-method="cdam"] .tick',
                                      "els => els.map(e => Number(e.dataset.value))")
    scale = body["scale"]
    assert ticks == pytest.approx([scale["lo"], 0.0, scale["hi"]]) and scale["hi"] == -scale["lo"] > 0
    # ... and those are the raw maps' own range over both targets.
    data = page.context.request.get(page.url + "api/examples/traitshapes-0").body()
    ref = explain(served["micro"], model_input(served["micro"], data), method="cdam", target="topk:2",
                  normalize="none").maps
    assert scale["hi"] == pytest.approx(float(ref.abs().max()), rel=1e-4)
    assert scale["min"] == pytest.approx(float(ref.min()), abs=1e-5)
    # The opacity slider sets the heat layers' opacity.
    page.fill("#opacity", "80")
    assert page.text_content("#opacity-value") == "80 %"
    assert page.eval_on_selector("#maps img.heat", "img => getComputedStyle(img).opacity") == "0.8"
    # PNG download: the image with the map at the slider's opacity.
    with page.expect_download() as dl:
        page.click("#maps .method-col >> nth=0 >> button.png-dl >> nth=0")
    assert dl.value.suggested_filename == f"micro_cdam_{safe(body['targets'][0]['name'])}.png"
    got = np.asarray(Image.open(dl.value.path()).convert("RGB"), dtype=np.int16)
    base = np.asarray(decode_data_url(body["image"]), dtype=np.float32)
    heat = np.asarray(decode_data_url(body["targets"][0]["heat"]), dtype=np.float32)
    want = np.round(0.2 * base + 0.8 * heat)
    assert got.shape == want.shape and np.abs(got - want).max() <= 2
    # npz download: the shown explanation, readable by Explanation.load.
    with page.expect_download() as dl:
        page.click('#maps .method-col[data-method="cdam"] a.npz-dl')
    path = tmp_path / "maps.npz"
    dl.value.save_as(path)
    exp = Explanation.load(path)
    assert exp.method == "cdam" and torch.allclose(exp.maps, ref, atol=1e-5)


def test_switching_models_resets_what_the_new_model_cannot_run(page, tmp_path):
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes(48, 48, seed=6))
    page.select_option("#method", "raw_attention")
    page.select_option("#target-kind", "topk")
    page.fill("#topk", "3")
    page.check("#compare-cdam")
    page.set_input_files("#image", str(image))
    page.locator("#maps .method-col").nth(1).wait_for()
    idle(page)
    # The 2-class CNN runs neither raw_attention nor cdam, and has no third class: the first request after the
    # switch must still run.
    with page.expect_response(lambda r: r.url.endswith("/api/explain")) as first:
        page.select_option("#model", "conv")
    assert first.value.status == 200
    page.locator("#method-name", has_text="on conv").wait_for()
    idle(page)
    offered = methods_offered(page)
    assert offered == ["input_x_gradient", "integrated_gradients", "smoothgrad"]
    assert page.input_value("#method") in offered
    assert page.input_value("#topk") == "2"
    assert page.locator("#maps .method-col").count() == 1  # the compared cdam does not run on conv: untick
    assert page.locator("#maps .method-col .cell").count() == 2
    assert not page.is_visible("#error")
    page.select_option("#model", "micro")
    page.locator("#method-name", has_text="on micro").wait_for()
    idle(page)
    assert not page.is_visible("#error")


def test_contrast_and_an_error_clears_the_previous_result(page, tmp_path):
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes(64, 64, seed=5))
    page.set_input_files("#image", str(image))
    idle(page)
    page.select_option("#method", "cdam")
    page.select_option("#target-kind", "class")
    page.select_option("#target-class", "0")
    page.select_option("#contrast", "2")
    page.wait_for_selector("#contrast-panel:not([hidden]) img.heat")
    idle(page)
    assert page.text_content("#contrast-title") == "Why circle, not triangle"
    assert decode_data_url(page.get_attribute("#contrast-out img.heat", "src")).size == (320, 320)
    words = page.eval_on_selector_all("#contrast-out .words span", "els => els.map(e => e.textContent)")
    assert words == ["for triangle", "for circle"]
    with page.expect_download() as dl:
        page.click("#contrast-out button.png-dl")
    assert dl.value.suggested_filename == "cdam_circle_not_triangle.png"
    # A file that is not an image: the server's 415 message is shown, and nothing of the last result stays.
    text = tmp_path / "notes.png"
    text.write_bytes(b"definitely not a picture")
    page.set_input_files("#image", str(text))
    page.wait_for_selector("#error:not([hidden])")
    assert "415" in page.text_content("#error") and "not a supported image" in page.text_content("#error")
    assert page.is_hidden("#output")
    assert page.locator("#output img").count() == 0 and page.locator("#predictions li").count() == 0
    page.errors.clear()  # Chromium logs the refused request (415) as a console error
    # The next good image shows a result again and hides the error.
    page.set_input_files("#image", str(image))
    page.locator("#maps img.heat").first.wait_for()
    idle(page)
    assert page.is_hidden("#error")


def test_concept_from_sample_images_in_the_page(page, tmp_path):
    samples = []
    for seed in (11, 12):
        path = tmp_path / f"sample{seed}.png"
        path.write_bytes(png_bytes(40, 40, seed=seed))
        samples.append(str(path))
    image = tmp_path / "query.png"
    image.write_bytes(png_bytes(40, 40, seed=13))
    page.click("#concept-panel summary")
    page.fill("#concept-name", "speckle")
    page.set_input_files("#concept-images", samples)
    page.click("#concept-btn")
    page.locator("#concept-status", has_text="ready").wait_for()
    assert page.input_value("#target-kind") == "concept"
    # A concept target: only the methods that take concepts are offered.
    assert methods_offered(page) == ["cdam", "integrated_cdam", "smooth_cdam"]
    page.select_option("#target-concept", index=0)
    page.select_option("#method", "cdam")
    page.set_input_files("#image", str(image))
    page.locator("#maps figcaption", has_text="concept: speckle").wait_for()
    idle(page)
    assert decode_data_url(page.get_attribute("#maps img.heat", "src")).size == (320, 320)


def safe(text: str) -> str:
    """The page's file-name rule (app.js safeName)."""
    return re.sub(r"^-+|-+$", "", re.sub(r"[^A-Za-z0-9_.-]+", "-", text)) or "map"
