"""`fit` spread over CPU cores: one process per core, one thread each, as DDP over gloo.

On a CPU, torch's intra-op threads scale poorly for small models, and collapse when another process is busy
(docs/history.md, "CPU threading"). Data-parallel processes with one thread each keep every core busy instead. The
run is the distributed `fit` (`train.trainer`): each process takes its share of every global batch, so the
recipe, the checkpoints and the run folder are those of a single-process run.
"""

from __future__ import annotations

import copy
import datetime
import io
import logging
import os
import queue as queue_module
import tempfile
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
import torch.nn as nn
from torch.utils.data import Dataset

from traitlens.train.trainer import FitConfig, FitResult, fit

__all__ = ["fit_on_cores"]

log = logging.getLogger(__name__)


def fit_on_cores(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset | None = None,
    config: FitConfig | None = None,
    out: str | Path | None = None,
    *,
    processes: int | None = None,
    progress: bool = True,
) -> FitResult:
    """`fit(model, train_set, val_set, config, out)` on `processes` CPU processes (default: one per core, at most 2).

    With one process (one core, or a GPU present) this is plain `fit`. Otherwise `model` and the datasets are
    shared with spawned workers (tensors in shared memory), and `model` is left holding the last epoch's weights,
    as `fit` leaves it.

    Raises:
        RuntimeError: a worker failed; the message carries its error.
    """
    n = processes if processes is not None else min(2, os.cpu_count() or 1)
    if n < 1:
        raise ValueError(f"processes must be >= 1, got {n}")
    if n == 1 or torch.cuda.is_available() or next(model.parameters()).device.type != "cpu":
        return fit(model, train_set, val_set, config, out=out, progress=progress)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="traitlens-ddp-") as rendezvous:
        store = f"file://{Path(rendezvous) / 'store'}"
        workers = [ctx.Process(target=_worker, args=(rank, n, store, model, train_set, val_set, config, out,
                                                     progress, logging.getLogger("traitlens").getEffectiveLevel(),
                                                     results))  # not daemons: they may start DataLoader workers
                   for rank in range(n)]
        for w in workers:
            w.start()
        try:
            outcome = _collect(results, workers)
        except BaseException:  # Ctrl-C in the parent: no worker is left training
            for w in workers:
                w.terminate()
            raise
        for w in workers:
            if outcome[0] != "ok":
                w.terminate()  # a rank left waiting in a collective for a failed peer
            w.join()
    status, payload = outcome
    if status != "ok":
        raise RuntimeError(f"training worker failed: {payload}")
    result, state = payload
    model.load_state_dict(torch.load(io.BytesIO(state), weights_only=True))
    model.eval()
    return result


def _collect(results: Any, workers: list[Any]) -> tuple[str, Any]:
    """Rank 0's result, or the first error; a worker that died without a word is an error too."""
    while True:
        try:
            return results.get(timeout=1.0)
        except queue_module.Empty:
            dead = [w for w in workers if not w.is_alive() and w.exitcode != 0]
            if dead:
                return "error", f"worker exited with code {dead[0].exitcode}"


def _worker(rank: int, world: int, store: str, model: nn.Module, train_set: Dataset, val_set: Dataset | None,
            config: FitConfig | None, out: str | Path | None, progress: bool, log_level: int, results: Any) -> None:
    torch.set_num_threads(1)
    model = copy.deepcopy(model)  # the parameters arrive in memory shared by every rank: each needs its own
    logging.basicConfig(level=log_level if rank == 0 else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        torch.distributed.init_process_group("gloo", init_method=store, rank=rank, world_size=world,
                                             timeout=datetime.timedelta(minutes=10))
        try:
            result = fit(model, train_set, val_set, config, out=out, progress=progress)
        finally:
            torch.distributed.destroy_process_group()
        if rank == 0:
            # As bytes: a tensor sent through the queue lives in the worker's memory, which ends with it.
            buffer = io.BytesIO()
            torch.save(model.state_dict(), buffer)
            results.put(("ok", (result, buffer.getvalue())))
    except Exception as err:  # reported to the parent, which raises it as one error
        log.debug("worker %d failed:\n%s", rank, traceback.format_exc())
        results.put(("error", f"rank {rank}: {type(err).__name__}: {err}"))
