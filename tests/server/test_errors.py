"""Every refusal: size caps (413), content sniffing (415), corrupt files and bombs (422), unknown names (400/404)."""

from __future__ import annotations

import io
import re
import struct
import zlib

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the server tests need the 'web' extra (fastapi, python-multipart)")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

from .helpers import TinyConv, png_bytes


def post(client, data: bytes, name: str = "upload.png", content_type: str = "image/png", **form):
    return client.post("/api/explain", files={"image": (name, data, content_type)}, data=form)


def detail(response) -> str:
    body = response.json()
    assert isinstance(body["detail"], str) and body["detail"]
    return body["detail"]


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_header_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width`×`height` (a decompression bomb as far as the header tells)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _chunk(b"IEND", b""))


# -- sizes ---------------------------------------------------------------------------------------------------------

def test_oversize_file_is_413(make_client):
    data = png_bytes(64, 64)  # random noise: ~12 kB
    assert len(data) > 4000
    r = post(make_client(max_upload_bytes=4000), data)
    assert r.status_code == 413
    assert "4000" in detail(r)


def test_oversize_body_is_413_before_parsing(make_client):
    client = make_client(max_request_bytes=10_000)
    r = post(client, png_bytes(128, 128))
    assert r.status_code == 413 and "10000" in detail(r)
    # A body without Content-Length (chunked) is counted as it arrives.
    def chunks():
        for _ in range(20):
            yield b"x" * 1000

    r = client.post("/api/explain", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413
    assert client.get("/api/health").json()["status"] == "ok"


def test_empty_file_is_400(make_client):
    r = post(make_client(), b"")
    assert r.status_code == 400 and "empty" in detail(r)


# -- types (content sniffing, not the client's claims) --------------------------------------------------------------

@pytest.mark.parametrize("data", [b"hello, I am text pretending to be a PNG", b"MZ\x90\x00" + bytes(200),
                                  b"%PDF-1.7\n" + bytes(100), b"<svg xmlns='http://www.w3.org/2000/svg'/>"])
def test_non_image_bytes_are_415_whatever_the_content_type(make_client, data):
    r = post(make_client(), data, name="cat.png", content_type="image/png")
    assert r.status_code == 415
    assert "PNG" in detail(r) and "content" in detail(r)


def test_a_real_image_with_a_wrong_name_and_type_is_accepted(make_client):
    r = post(make_client(), png_bytes(), name="notes.txt", content_type="text/plain")
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "GIF", "BMP"])
def test_other_image_formats_are_sniffed_and_accepted(make_client, fmt):
    r = post(make_client(), png_bytes(40, 30, fmt=fmt), name="x", content_type="application/octet-stream")
    assert r.status_code == 200, r.text
    assert r.json()["overlay_size"] == {"width": 320, "height": 240}


# -- corrupt files and bombs -----------------------------------------------------------------------------------------

def test_truncated_png_is_422(make_client):
    data = png_bytes(64, 64)
    r = post(make_client(), data[: len(data) // 2])
    assert r.status_code == 422
    assert "corrupt or truncated PNG" in detail(r)


def test_png_with_a_broken_checksum_is_422(make_client):
    data = bytearray(png_bytes(64, 64))
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF  # flip bits inside the compressed data: CRC mismatch
    r = post(make_client(), bytes(data))
    assert r.status_code == 422 and "PNG" in detail(r)


@pytest.mark.parametrize(("side", "needle"), [(6000, "6000×6000"), (100_000, "pixels")])
def test_header_only_bomb_is_422_before_decoding(make_client, side, needle):
    r = post(make_client(), bomb_header_png(side, side))
    assert r.status_code == 422
    msg = detail(r)
    assert needle in msg and "decompression-bomb" in msg and "24000000" in msg


def test_real_highly_compressed_bomb_is_422(make_client):
    buf = io.BytesIO()
    Image.new("L", (3000, 3000)).save(buf, format="PNG")  # 9 MP of zeros: a few kB on the wire
    assert len(buf.getvalue()) < 50_000
    r = post(make_client(max_pixels=1_000_000), buf.getvalue())
    assert r.status_code == 422 and "1000000" in detail(r)


# -- unknown names ---------------------------------------------------------------------------------------------------

def test_unknown_method_is_400_and_named(make_client):
    r = post(make_client(), png_bytes(), method="no_such_method")
    assert r.status_code == 400
    assert "no_such_method" in detail(r) and "cdam" in detail(r)


def test_unknown_model_is_404_and_named(make_client):
    r = post(make_client(), png_bytes(), model="../../etc/passwd")
    assert r.status_code == 404
    assert "../../etc/passwd" in detail(r) and "micro" in detail(r)


def test_unknown_class_name_is_400_and_named(make_client):
    r = post(make_client(), png_bytes(), target="hexagon")
    assert r.status_code == 400
    assert "hexagon" in detail(r) and "circle" in detail(r)


@pytest.mark.parametrize(("target", "needle"), [("7", "7"), ("-1", "-1"), ("topk:9", "topk:9"), ("topk:x", "topk:x")])
def test_out_of_range_targets_are_400(make_client, target, needle):
    r = post(make_client(), png_bytes(), target=target)
    assert r.status_code == 400 and needle in detail(r)


def test_unknown_concept_is_404_and_named(make_client):
    r = post(make_client(), png_bytes(), target="concept:deadbeef")
    assert r.status_code == 404 and "deadbeef" in detail(r)


def test_control_characters_and_long_fields_are_refused(make_client):
    client = make_client()
    assert post(client, png_bytes(), method="cdam\x00").status_code == 400
    assert post(client, png_bytes(), target="x" * 500).status_code == 400


def test_missing_image_is_a_validation_error(make_client):
    r = make_client().post("/api/explain", data={"method": "cdam"})
    assert r.status_code == 422


def test_foreign_host_header_is_refused(make_client):
    client = make_client()
    r = client.get("/api/info", headers={"host": "attacker.example"})
    assert r.status_code == 400 and "attacker.example" in detail(r)
    assert client.get("/api/info", headers={"host": "localhost:8000"}).status_code == 200
    assert client.get("/api/info", headers={"host": "[::1]:8000"}).status_code == 200


def test_method_that_refuses_the_model_is_a_400(make_client, micro_model):
    """A post-hoc ViT method on a model that is no ViT answers 400 with the method's message, not 500."""

    r = post(make_client(models={"tiny": TinyConv()}), png_bytes(), method="rollout")
    assert r.status_code == 400, r.text
    assert "Tiny" in detail(r) or "ViT" in detail(r)


# -- errors from the work: user errors are 4xx with one line, bugs a 500 with a request id ----------------------

def _raising(monkeypatch, err: BaseException) -> None:
    import traitlens.server.service as service

    def explode(*_args, **_kwargs):
        raise err

    monkeypatch.setattr(service, "explain", explode)


@pytest.mark.parametrize(("err", "status", "reason"), [
    (KeyError("unknown trait 'stripes'"), 400, "unknown trait 'stripes'"),
    (KeyError("nope"), 400, "nope"),
    (NotImplementedError("lrp is not implemented\n  for this attention"), 400,
     "lrp is not implemented for this attention"),
    (ValueError("bad option"), 400, "bad option"),
    (TypeError("not a ViT"), 400, "not a ViT"),
])
def test_user_errors_from_the_work_are_4xx_with_one_line(make_client, monkeypatch, err, status, reason):
    _raising(monkeypatch, err)
    r = post(make_client(), png_bytes())
    assert r.status_code == status, r.text
    assert detail(r) == reason


def test_an_undecodable_image_error_is_422(make_client, monkeypatch):
    from PIL import UnidentifiedImageError

    import traitlens.server.service as service

    def undecodable(*_args, **_kwargs):
        raise UnidentifiedImageError("cannot identify image file")

    monkeypatch.setattr(service.Server, "decode", undecodable)
    r = post(make_client(), png_bytes())
    assert r.status_code == 422 and "cannot identify image file" in detail(r)


def test_a_bug_is_a_500_with_a_request_id_and_the_traceback_only_in_the_log(make_client, monkeypatch, caplog):
    import logging

    _raising(monkeypatch, RuntimeError("secret detail at /home/someone/model.py"))
    client = make_client()
    with caplog.at_level(logging.ERROR, logger="traitlens.server"):
        r = post(client, png_bytes())
    assert r.status_code == 500
    body = r.json()
    assert set(body) == {"detail", "request_id"} and body["detail"] == "internal error"
    rid = body["request_id"]
    assert re.fullmatch(r"[0-9a-f]{16}", rid) and r.headers["x-request-id"] == rid
    assert "secret" not in r.text and "Traceback" not in r.text and "RuntimeError" not in r.text
    (record,) = [rec for rec in caplog.records if rid in rec.getMessage()]
    assert record.levelno == logging.ERROR and record.exc_info and record.exc_info[0] is RuntimeError
    assert "/api/explain" in record.getMessage()
    # The server keeps serving, and each request has its own id.
    ok = client.get("/api/health")
    assert ok.status_code == 200 and ok.headers["x-request-id"] not in ("", rid)


def test_a_bug_outside_explain_is_the_same_json_500(make_client, monkeypatch):
    client = make_client()
    srv = client.app.state.server

    def broken():
        raise AttributeError("'NoneType' object has no attribute 'describe'")

    monkeypatch.setattr(srv.concepts, "all", broken)
    r = client.get("/api/concepts")
    assert r.status_code == 500 and r.json() == {"detail": "internal error", "request_id": r.headers["x-request-id"]}


def test_methods_are_checked_against_the_model_before_any_work(make_client, monkeypatch):
    """A method the model's family cannot run is refused up front (400, one line), and /api/info offers per model
    only the methods that pass the same check."""
    import traitlens.server.service as service
    from traitlens.backbones import create_preset
    from traitlens.explain import list_methods, method_refusal


    calls: list[str] = []
    real = service.explain
    monkeypatch.setattr(service, "explain", lambda *a, **k: calls.append(k["method"]) or real(*a, **k))
    client = make_client(models={"vit": create_preset("traitlens-vit-micro", 3), "conv": TinyConv()})
    info = {m["name"]: m["methods"] for m in client.get("/api/info").json()["models"]}
    vit_only = [m.name for m in list_methods() if m.families == ("vit",)]
    assert set(vit_only) <= set(info["vit"]) and not set(vit_only) & set(info["conv"])
    # A bare module whose forward returns logits: the pixel-gradient methods (Grad-CAM needs a timm CNN's parts).
    assert info["conv"] == ["input_x_gradient", "integrated_gradients", "smoothgrad"]
    for method in vit_only:
        r = post(client, png_bytes(), model="conv", method=method)
        assert r.status_code == 400, (method, r.text)
        msg = detail(r)
        assert msg == method_refusal(TinyConv(), method) and f"'{method}'" in msg and "[vit]" in msg
        assert all(name in msg for name in info["conv"])  # what the model does support
    assert calls == []
