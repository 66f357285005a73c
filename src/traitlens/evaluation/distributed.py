"""`evaluate` under `torchrun`: each rank evaluates a contiguous shard of the images and the results are gathered
in rank order (gloo on CPU), so the table equals a single-process run."""

from __future__ import annotations

from typing import Any

import torch

from traitlens.evaluation.padding import concat_results
from traitlens.metrics import MetricResult

__all__ = ["gather_results", "rank_and_world", "shard"]


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of an initialised `torch.distributed` group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(n: int, rank: int, world: int) -> tuple[int, int]:
    """The [lo, hi) image range of `rank`: contiguous, in rank order."""
    return rank * n // world, (rank + 1) * n // world


Results = dict[tuple[str, str], MetricResult]
"""(method, metric label) → result."""


def gather_results(merged: Results, indices: torch.Tensor, seconds: dict[str, list[float]], skipped: dict[str, str]
                   ) -> tuple[Results, torch.Tensor, dict[str, list[float]], dict[str, str]]:
    """All-gather every rank's results (gloo pickles them) and concatenate in rank order."""
    import torch.distributed as dist

    payload = {"results": merged, "indices": indices, "seconds": seconds, "skipped": skipped}
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, payload)
    keys = list(dict.fromkeys(k for g in gathered for k in g["results"]))
    # a result missing on some rank (a method or metric failed there) cannot be aligned with the images: drop it
    complete = [k for k in keys if all(k in g["results"] or len(g["indices"]) == 0 for g in gathered)]
    out = {k: concat_results([g["results"][k] for g in gathered if k in g["results"]]) for k in complete}
    secs = {m: [sum(g["seconds"][m][0] for g in gathered), sum(g["seconds"][m][1] for g in gathered)]
            for m in seconds}
    skip: dict[str, str] = {}
    for g in gathered:
        skip.update(g["skipped"])
    for k in keys:
        if k not in complete:
            skip.setdefault(f"{k[0]}/{k[1]}", "failed on some ranks")
    return out, torch.cat([g["indices"] for g in gathered]), secs, skip
