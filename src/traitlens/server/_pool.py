"""A bounded worker pool: a fixed number of threads and a fixed queue, refusing (not piling up) beyond it.

Explanations register hooks and toggle attention settings on the model they run on, so two threads must never
share one module: each job borrows its own replica of the model (`ModelReplicas`).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import torch.nn as nn

__all__ = ["BoundedPool", "ModelReplicas", "PoolBusy", "PoolTimeout"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class PoolBusy(RuntimeError):
    """Every worker is busy and the queue is full."""


class PoolTimeout(TimeoutError):
    """A job did not finish within the request's time limit."""


class BoundedPool:
    """`workers` threads and at most `queue_size` waiting jobs; `run` refuses at once when both are full.

    Args:
        workers: threads computing jobs.
        queue_size: jobs allowed to wait for a free thread.
    """

    def __init__(self, workers: int, queue_size: int) -> None:
        self.workers = workers
        self.capacity = workers + queue_size
        self._slots = threading.BoundedSemaphore(self.capacity)
        self._lock = threading.Lock()
        self._in_flight = 0
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="traitlens-serve")

    @property
    def in_flight(self) -> int:
        """Jobs running or waiting now."""
        with self._lock:
            return self._in_flight

    def _release(self, _fut: Future) -> None:
        with self._lock:
            self._in_flight -= 1
        self._slots.release()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue `fn(*args)`; raises `PoolBusy` when the pool and its queue are full."""
        if not self._slots.acquire(blocking=False):
            raise PoolBusy(f"the server is busy ({self.capacity} requests running or queued); retry shortly")
        with self._lock:
            self._in_flight += 1
        try:
            fut = self._executor.submit(fn, *args)
        except RuntimeError:  # executor shut down
            self._release(Future())
            raise
        # The slot is freed when the job really ends (a timed-out job still holds its thread until it returns).
        fut.add_done_callback(self._release)
        return fut

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float) -> T:
        """Run `fn(*args)` in the pool and await it for at most `timeout` seconds.

        Raises:
            PoolBusy: no free worker and no room in the queue.
            PoolTimeout: the job took longer; if it had not started yet, it is cancelled.
        """
        fut = self.submit(fn, *args)
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)), timeout)
        except asyncio.TimeoutError as err:
            started = not fut.cancel()
            log.warning("job %s timed out after %.1f s (%s)", getattr(fn, "__name__", fn), timeout,
                        "still running; its result will be dropped" if started else "cancelled before it started")
            raise PoolTimeout(f"the request took longer than {timeout:g} s and was abandoned") from err

    def shutdown(self) -> None:
        """Stop accepting jobs; cancel queued ones and do not wait for running ones."""
        self._executor.shutdown(wait=False, cancel_futures=True)


class ModelReplicas:
    """Hands each job a model no other thread is using: one replica per worker, copied up front.

    The copies are made at start-up, before any job could have attached hooks to the original.
    """

    def __init__(self, model: nn.Module, replicas: int) -> None:
        self.model = model
        self._free: queue.SimpleQueue[nn.Module] = queue.SimpleQueue()
        self._free.put(model)
        for _ in range(replicas - 1):
            self._free.put(copy.deepcopy(model).eval())

    def acquire(self) -> nn.Module:
        """A replica for this job; blocks only when every replica is in use (never with one per worker)."""
        return self._free.get()

    def release(self, replica: nn.Module) -> None:
        """Give a replica back."""
        self._free.put(replica)
