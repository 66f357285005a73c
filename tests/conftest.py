"""Shared fixtures: tiny hand-checkable ViTs (posthoc.md §0 "Test fixtures"), built in milliseconds."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

torch.set_num_threads(2)


def make_tiny_vit(depth: int = 1, dim: int = 8, heads: int = 2, patch: int = 4, img: int = 8,
                  num_classes: int = 3, seed: int = 0, dtype: torch.dtype = torch.float64,
                  **kwargs) -> VisionTransformer:
    """A tiny timm ViT: 2×2 grid, P = 4, N = 5 by default; float64 for the oracles."""
    torch.manual_seed(seed)
    model = VisionTransformer(img_size=img, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads,
                              num_classes=num_classes, global_pool=kwargs.pop("global_pool", "token"), **kwargs)
    # timm zero-initialises the head; random weights make every class distinct.
    if num_classes:
        nn.init.normal_(model.head.weight, std=0.5)
        nn.init.normal_(model.head.bias, std=0.1)
    return model.to(dtype).eval()


#: The smallest configurations of the interpretable models, on a micro ViT backbone.
TINY_NATIVE = {"promptcam": {}, "intr": {"hidden_dim": 16, "nheads": 2, "enc_layers": 1, "dec_layers": 1,
                                         "dim_feedforward": 32},
               "scouter": {"hidden_dim": 8, "slots_per_class": 2, "e": -1}}


def make_tiny_native(kind: str, num_classes: int = 5, **options) -> tuple[nn.Module, nn.Module]:
    """(model, backbone): a Prompt-CAM, INTR or SCOUTER on a random `traitlens-vit-micro` (32 px), seed 0, eval mode;
    `options` override the tiny configuration."""
    from traitlens.backbones import create_preset
    from traitlens.models import INTR, SCOUTER, PromptCAM

    torch.manual_seed(0)
    backbone = create_preset("traitlens-vit-micro", 0)
    cls = {"promptcam": PromptCAM, "intr": INTR, "scouter": SCOUTER}[kind]
    return cls(backbone, num_classes, **{**TINY_NATIVE[kind], **options}).eval(), backbone


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """`traitlens ARGS` through the script's entry point (`main`), in this process: (exit code, stderr)."""
    import sys

    from traitlens.cli import main

    monkeypatch.setattr(sys, "argv", ["traitlens", *args])
    with pytest.raises(SystemExit) as stop:
        main()
    return int(stop.value.code or 0), capsys.readouterr().err


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, scanlines: bytes) -> bytes:
    """A PNG file written by hand from filtered scanlines (each row: filter byte + packed big-endian samples).

    For files PIL cannot write (16-bit RGB) or would have to hold in memory first (a 10000×10000 1-bit image).
    """
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(scanlines))
            + chunk(b"IEND", b""))


def png16(samples: np.ndarray) -> bytes:
    """A 16-bit PNG of uint16 samples: grey [H,W] (colour type 0) or RGB [H,W,3] (colour type 2)."""
    h, w = samples.shape[:2]
    rows = samples.astype(">u2").reshape(h, -1)
    return png_bytes(w, h, 16, 2 if samples.ndim == 3 else 0, b"".join(b"\x00" + row.tobytes() for row in rows))


def make_uniform_vit(depth: int = 1, **kwargs) -> VisionTransformer:
    """The U fixture: A = 1/N exactly (q, k rows of qkv zero), MLP output zero, final norm Identity."""
    model = make_tiny_vit(depth=depth, **kwargs)
    with torch.no_grad():
        for blk in model.blocks:
            D = blk.attn.qkv.in_features
            blk.attn.qkv.weight[: 2 * D].zero_()
            blk.attn.qkv.bias[: 2 * D].zero_()
            blk.mlp.fc2.weight.zero_()
            blk.mlp.fc2.bias.zero_()
    model.norm = nn.Identity()
    return model


@pytest.fixture
def micro_model_dir(tmp_path):
    """A saved random `traitlens-vit-micro` (32 px, classes ant, bee, cow): a model folder for the CLI."""
    from traitlens.backbones import create_preset, save_model

    path = tmp_path / "model"
    save_model(create_preset("traitlens-vit-micro", 3, class_names=["ant", "bee", "cow"]), path)
    return path


@pytest.fixture
def tiny_vit():
    """Factory fixture: `tiny_vit(depth=2)`."""
    return make_tiny_vit


@pytest.fixture
def uniform_vit():
    """Factory fixture for the U fixture."""
    return make_uniform_vit


@pytest.fixture
def tiny_images():
    """Factory: `tiny_images(B, img=8)` float64 random images."""

    def make(batch: int = 2, img: int = 8, seed: int = 1, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(batch, 3, img, img, generator=g, dtype=dtype)

    return make


# A tiny ViT trained on TraitShapes, shared by every test that needs a model that learnt the traits.
TRAINED_CLASSES = 8
TRAINED_N_TRAIN = 8000
TRAINED_EPOCHS = 5


@pytest.fixture(scope="session")
def trained_traitshapes(tmp_path_factory):
    """(model, train set, test set) — `traitlens-vit-tiny` fitted on TraitShapes (~1 minute on 2 cores)."""
    from traitlens.backbones import create_preset
    from traitlens.data.traitshapes import TraitShapes, TraitShapesConfig, materialize
    from traitlens.train import FitConfig, fit_on_cores

    cfg = TraitShapesConfig(size=64, num_classes=TRAINED_CLASSES, seed=11)
    train = materialize(TraitShapes(cfg, "train", TRAINED_N_TRAIN), num_workers=2, progress=False)
    test = materialize(TraitShapes(cfg, "test", 600), num_workers=0, progress=False)
    torch.manual_seed(0)
    model = create_preset("traitlens-vit-tiny", TRAINED_CLASSES, class_names=train.classes)
    # float32 (no bf16 autocast): bf16 kernels differ between CPUs (AMX, AVX512-BF16), and the thresholds of the
    # tests on this model must not depend on the machine; one-thread processes keep it fast on a busy machine.
    fit_on_cores(model, train, None, FitConfig(epochs=TRAINED_EPOCHS, batch_size=128, lr=2e-3, seed=0, amp=False),
                 out=tmp_path_factory.mktemp("trained"), progress=False)
    return model.float().eval(), train, test
