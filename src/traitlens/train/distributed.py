"""torchrun support: start the process group from the environment torchrun sets."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["distributed_from_env"]

log = logging.getLogger(__name__)


@contextmanager
def distributed_from_env() -> Iterator[torch.device]:
    """Initialise torch.distributed when WORLD_SIZE > 1 (nccl on GPUs, gloo on CPUs); yield this rank's device.

    Example:
        torchrun --nproc-per-node 2 -m traitlens train finetune --data DIR ...
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world <= 1:
        yield torch.device("cuda" if cuda else "cpu")
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if cuda else "gloo"
    torch.distributed.init_process_group(backend=backend)
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    log.info("rank %d/%d on %s (%s)", torch.distributed.get_rank(), world, device, backend)
    try:
        yield device
    finally:
        torch.distributed.destroy_process_group()
