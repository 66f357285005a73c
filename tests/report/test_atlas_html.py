"""The atlas pages (docs/atlas.md "The pages"): self-contained files that show every class, opened from disk in
headless Chromium (the system browser; skipped where playwright or Chromium is absent, like tests/server)."""

from __future__ import annotations

import base64
import re
import tempfile
from pathlib import Path

import pytest

from tests.server.helpers import CHROMIUM_ARGS, chromium_path, collect_errors
from traitlens.evaluation import Atlas, atlas
from traitlens.report import write_atlas_html
from traitlens.report.atlas_html import lift_colour


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> tuple[Atlas, Path]:
    """An atlas of a random micro ViT on 12 TraitShapes images of 4 classes, with its pages."""
    from tests.evaluation.conftest import make_setup

    model, data = make_setup(n=12, num_classes=4)
    out = tmp_path_factory.mktemp("atlas")
    res = atlas(model, data, "cdam", out, batch_size=6, progress=False)
    write_atlas_html(res)
    return res, out


def test_lift_colours():
    assert lift_colour(1.0) == "#ffffff"  # as much evidence as area: neutral
    assert lift_colour(8.0) == lift_colour(100.0) == "#ffa600"  # saturates at 8×
    assert lift_colour(1 / 8) == "#4371ab"
    assert lift_colour(float("nan")) == "#eeeeee"


def test_pages_are_self_contained_and_link_every_class(pages):
    res, out = pages
    index = (out / "index.html").read_text(encoding="utf-8")
    for c in res.classes:
        assert f"href='classes/c{c.index:04d}.html'" in index and c.name in index
        page = (out / "classes" / f"c{c.index:04d}.html").read_text(encoding="utf-8")
        for p in c.confused:
            assert f"id='pair-{p.other}'" in page and f"Why {c.name}, not" in page
        images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
        # image + map per exemplar, and one contrast map per exemplar and confused class
        assert len(images) == len(c.exemplars) * (2 + len(c.confused))
        assert all(base64.b64decode(b).startswith(b"\x89PNG") for b in images)
        assert not re.search(r"(src|href)=['\"](https?:|//)", page)
    n = round(res.hit_fraction * 4)
    assert f"<b>{n} of 4</b> classes" in index
    assert not re.search(r"(src|href)=['\"](https?:|//)", index)


def test_pages_open_from_disk_in_chromium(pages):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs the 'playwright' package")
    exe = chromium_path()
    if exe is None:
        pytest.skip("no Chromium binary (apt-get install chromium, or set TRAITLENS_CHROMIUM)")
    res, out = pages
    with sync_api.sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        context = pw.chromium.launch_persistent_context(profile, executable_path=exe, headless=True,
                                                        args=CHROMIUM_ARGS)
        try:
            page = context.new_page()
            page.set_default_timeout(30_000)
            errors = collect_errors(page)
            page.on("request", lambda req: errors.append(f"request {req.url}")
                    if not req.url.startswith(("file:", "data:")) else None)
            page.goto((out / "index.html").as_uri())
            rows = page.eval_on_selector_all("#class-parts tbody tr td:first-child a", "els => els.map(e => e.text)")
            assert rows == [c.name for c in res.classes]
            assert page.locator("#classes tr.class-row").count() == len(res.classes)
            assert "of 4" in page.text_content("#hit-fraction")
            c = next(c for c in res.classes if c.exemplars)
            page.click(f"#classes a[href='classes/c{c.index:04d}.html']")
            page.wait_for_selector("#parts")
            assert page.text_content("h1") == c.name
            # every embedded image decodes
            sizes = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
            assert sizes and all(w == 32 for w in sizes)
            pair = c.confused[0]
            page.click(f"a[href='c{pair.other:04d}.html']")
            assert page.text_content("h1") == pair.other_name
            page.go_back()
            page.click("nav a[href='../index.html']")
            assert page.url.endswith("index.html")
            assert errors == []
        finally:
            context.close()
