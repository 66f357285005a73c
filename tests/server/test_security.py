"""Cross-site requests (Origin / Sec-Fetch-Site), the /docs page, the page's CSP, and no paths in /api/info."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("fastapi", reason="the server tests need the 'web' extra (fastapi, python-multipart)")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

import traitlens.server.service as service
from traitlens.server import load_served_models
from traitlens.server.middleware import SecurityHeaders

from .helpers import png_bytes

IMAGE = {"image": ("x.png", png_bytes(), "image/png")}


@pytest.fixture
def calls(monkeypatch) -> list[str]:
    """Counts explanations actually computed (a refused request must compute nothing)."""
    seen: list[str] = []
    real = service.explain

    def counting(*args, **kwargs):
        seen.append(kwargs.get("method", ""))
        return real(*args, **kwargs)

    monkeypatch.setattr(service, "explain", counting)
    return seen


def detail(r) -> str:
    text = r.json()["detail"]
    assert isinstance(text, str) and "\n" not in text
    return text


@pytest.mark.parametrize("origin", ["http://evil.example", "https://evil.example:8000", "null",
                                    "http://localhost:3000", "http://127.0.0.1.evil.example", "garbage"])
def test_cross_origin_state_changing_requests_are_403(make_client, calls, origin):
    client = make_client()
    headers = {"origin": origin}
    r = client.post("/api/explain", files=IMAGE, data={"method": "cdam"}, headers=headers)
    assert r.status_code == 403 and "cross-origin" in detail(r) and origin in detail(r)
    r = client.post("/api/concept", files=[("images", ("x.png", png_bytes(), "image/png"))], data={"name": "c"},
                    headers=headers)
    assert r.status_code == 403
    assert client.delete("/api/concepts/abc", headers=headers).status_code == 403
    assert calls == [] and client.get("/api/concepts").json() == []
    # Reads stay open (a foreign page cannot read the answer without CORS headers, which are never sent).
    assert client.get("/api/info", headers=headers).status_code == 200


def test_sec_fetch_site_cross_site_is_refused_even_without_origin(make_client, calls):
    client = make_client()
    for site in ("cross-site", "same-site"):
        r = client.post("/api/explain", files=IMAGE, headers={"sec-fetch-site": site})
        assert r.status_code == 403 and site in detail(r)
    assert calls == []


def test_own_origin_and_no_origin_are_allowed(make_client, calls):
    client = make_client()  # TestClient: Host 'testserver', server port 80
    for headers in ({}, {"origin": "http://testserver"}, {"origin": "http://testserver:80"},
                    {"origin": "http://localhost", "sec-fetch-site": "same-origin"}, {"sec-fetch-site": "none"}):
        r = client.post("/api/explain", files=IMAGE, data={"method": "cdam"}, headers=headers)
        assert r.status_code == 200, (headers, r.text)
    assert len(calls) == 5


def test_cross_origin_is_refused_before_the_body_is_read(make_client):
    client = make_client(max_request_bytes=1000)
    r = client.post("/api/explain", content=b"x" * 5000, headers={"origin": "http://evil.example",
                                                                  "content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 403


def test_docs_are_off_by_default_and_have_a_policy_when_on(make_client, micro_model):
    from fastapi.testclient import TestClient

    from traitlens.server import create_app

    client = make_client()
    assert client.get("/docs").status_code == 404
    assert client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").status_code == 200  # the schema (no scripts) stays, the page links it
    with TestClient(create_app({"micro": micro_model}, docs=True)) as docs_client:
        page = docs_client.get("/docs")
        assert page.status_code == 200 and "swagger" in page.text.lower()
        csp = page.headers["content-security-policy"]
        # Every script the page loads comes from the one CDN the policy names, and nothing may frame it.
        for src in re.findall(r'<script src="([^"]+)"', page.text):
            assert src.startswith(SecurityHeaders.DOCS_CDN + "/"), src
        assert f"script-src 'self' 'unsafe-inline' {SecurityHeaders.DOCS_CDN};" in csp
        assert "frame-ancestors 'none'" in csp and "connect-src 'self'" in csp
        assert docs_client.get("/redoc").status_code == 404


def test_the_page_loads_only_its_own_files_under_a_strict_policy(make_client):
    client = make_client()
    page = client.get("/")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "unsafe-inline" not in csp and "http" not in csp
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "/static/app.js" in refs and "/static/style.css" in refs
    for ref in refs:
        assert ref.startswith("/"), f"the page refers to another site: {ref}"
        assert client.get(ref).status_code == 200, ref
    script = client.get("/static/app.js").text
    assert not re.search(r"https?://", script), "the page script talks to another site"
    assert "eval(" not in script and "innerHTML" not in script
    assert set(re.findall(r'fetch\("([^"]+)"', script)) == {"/api/info", "/api/explain", "/api/concept",
                                                             "/api/examples"}
    # The only fetch of a computed URL is an example's, which the server gives as a path of its own.
    assert re.findall(r"fetch\((\w[\w.]*)\)", script) == ["ex.url"]
    assert all(e["url"].startswith("/api/examples/") for e in client.get("/api/examples").json())


def test_info_shows_model_names_never_paths(micro_dir):
    from fastapi.testclient import TestClient

    from traitlens.server import create_app

    models = load_served_models([str(micro_dir)])
    with TestClient(create_app(models)) as client:
        r = client.get("/api/info")
        assert [m["name"] for m in r.json()["models"]] == [micro_dir.name] == [r.json()["default_model"]]
        for part in (str(micro_dir), str(micro_dir.parent)):
            assert part not in r.text
        # Requests name the model by that name.
        ok = client.post("/api/explain", files=IMAGE, data={"model": micro_dir.name, "method": "cdam"})
        assert ok.status_code == 200 and ok.json()["model"] == micro_dir.name
