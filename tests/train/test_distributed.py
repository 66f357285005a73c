"""torchrun + DDP on the CPU (gloo): 2 processes give the same model as 1 process on the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

from traitlens.data.traitshapes import TraitShapes, TraitShapesConfig, export_cub
from traitlens.train import load_checkpoint


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], cwd) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tmp_path) -> None:
    cfg = TraitShapesConfig(size=32, num_classes=4, seed=5)
    export_cub(TraitShapes(cfg, "train", 32), tmp_path / "data", test=TraitShapes(cfg, "test", 8))
    common = ["train", "finetune", "--data", str(tmp_path / "data"), "--model", "traitlens-vit-micro",
              "--epochs", "2", "--batch-size", "16", "--lr", "0.001", "--no-amp"]  # float32: compare the DDP maths
    _run([sys.executable, "-m", "traitlens", *common, "--out", str(tmp_path / "one")], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
          "--master-port", str(_free_port()), "-m", "traitlens", *common, "--out", str(tmp_path / "two")], tmp_path)
    one = load_checkpoint(tmp_path / "one" / "checkpoint.pt")
    two = load_checkpoint(tmp_path / "two" / "checkpoint.pt")
    assert one["epoch"] == two["epoch"] == 1
    assert one["config"]["amp"] is two["config"]["amp"] is False
    for name, a in one["model"].items():
        assert torch.allclose(a, two["model"][name], atol=2e-5, rtol=1e-4), name
    assert abs(one["history"][-1]["train_loss"] - two["history"][-1]["train_loss"]) < 1e-4
