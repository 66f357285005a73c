"""Sharded evaluation: 2 gloo processes (torch.multiprocessing) gather the same table as 1 process."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from traitlens.evaluation import evaluate

METHODS = ["cdam"]
# a dataset-level aggregate (pxap, macro pointing game), trait masks, and per-image seeded noise (infidelity)
METRICS = ["deletion", "pointing_game", "energy_pointing_game@trait", "pxap", "infidelity"]
OPTIONS = {"deletion": {"steps": 4}, "infidelity": {"n_samples": 2}}
N = 8


def _setup():
    from traitlens.backbones import create_preset
    from traitlens.data.traitshapes import TraitShapes, TraitShapesConfig, materialize

    torch.manual_seed(0)
    model = create_preset("traitlens-vit-micro", 4).eval()
    torch.nn.init.normal_(model.head.weight, std=0.5)  # timm zero-initialises the head
    data = materialize(TraitShapes(TraitShapesConfig(size=32, num_classes=4), "test", N), num_workers=0,
                       progress=False)
    return model, data


def _run(model, data, out):
    return evaluate(model, data, METHODS, METRICS, out=out, batch_size=3, metric_options=OPTIONS, n_boot=50,
                    progress=False, plots=False)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, data = _setup()
        res = _run(model, data, out)
        if rank == 0:
            torch.save({"rows": res.rows, "indices": res.indices,
                        "values": {f"{m}|{k}": r.values for (m, k), r in res.results.items()}},
                       Path(out) / "gathered.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(tmp_path):
    # fork: the ranks inherit the imported modules instead of re-importing torch/timm (seconds each); the
    # reference run happens in the parent after the fork
    ctx = mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path / "dist")), nprocs=2, join=False,
                             start_method="fork")
    model, data = _setup()
    single = _run(model, data, None)  # the reference, while the ranks start up
    while not ctx.join():
        pass
    gathered = torch.load(tmp_path / "dist" / "gathered.pt", weights_only=False)
    # shards [0,4) and [4,8) with batch 3 cut batches differently from the single run: per-image seeding matters
    assert gathered["indices"].tolist() == list(range(N))  # gathered in rank order
    assert set(gathered["values"]) == {f"{m}|{k}" for (m, k) in single.results}
    for (m, k), r in single.results.items():
        assert torch.allclose(gathered["values"][f"{m}|{k}"], r.values, atol=1e-5, equal_nan=True), (m, k)
    for a, b in zip(gathered["rows"], single.rows, strict=True):
        assert (a["method"], a["metric"], a["n"], a["n_nan"]) == (b["method"], b["metric"], b["n"], b["n_nan"])
        assert a["value"] == pytest.approx(b["value"], abs=1e-5, nan_ok=True)
    assert (tmp_path / "dist" / "results.csv").is_file()  # rank 0 wrote the files
