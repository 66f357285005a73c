"""An EXIF-turned photo gives the model the same upright pixels via `tl.load_images`, the CLI and an upload."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

pytest.importorskip("fastapi", reason="the server tests need the 'web' extra (fastapi, python-multipart)")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

import traitlens as tl
from traitlens.backbones.preprocess import pil_to_tensor
from traitlens.data.images import EXIF_ORIENTATION


@pytest.fixture(params=["JPEG", "PNG"])
def turned_file(request, tmp_path):
    """A 40×24 (W×H) photo stored sideways with EXIF orientation 6: upright it is 24 wide and 40 high."""
    arr = np.random.default_rng(3).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    path = tmp_path / f"turned.{request.param.lower()}"
    Image.fromarray(arr).save(path, format=request.param, exif=exif)
    return path


def test_exif_orientation_is_the_same_on_every_path(turned_file, micro_dir, make_client, tmp_path):
    from typer.testing import CliRunner

    from traitlens.cli import app

    with Image.open(turned_file) as img:
        upright = ImageOps.exif_transpose(img).convert("RGB")
    assert upright.size == (24, 40)
    assert torch.equal(tl.load_image(turned_file), pil_to_tensor(upright))

    model = tl.load_model(micro_dir)
    x01 = tl.load_images([turned_file], model=model)
    assert torch.equal(x01[0], pil_to_tensor(upright, (32, 32)))
    ref = tl.explain(model, tl.normalize(model, x01), method="cdam", target="top1")

    r = make_client().post("/api/explain", files={"image": ("x", turned_file.read_bytes(), "image/jpeg")},
                           data={"method": "cdam", "include_raw": "true"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["overlay_size"] == {"width": 192, "height": 320}  # upright, not 320×192
    assert torch.tensor(body["targets"][0]["raw"]) == pytest.approx(ref.patch_maps[0, 0], abs=1e-6)

    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["explain", str(turned_file), "--model", str(micro_dir), "--method", "cdam",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    cli_maps = torch.from_numpy(np.load(out / "cdam.npz")["patch_maps"])
    assert cli_maps == pytest.approx(ref.patch_maps, abs=1e-6)
