"""ComputePool: the compute threads, lowest free first, so a lone batch always runs on the same one.

torch's intra-op parallelism is OpenMP, and an OpenMP team belongs to the
thread that opens the parallel region: each compute thread drives its own
team of workers. A ``ThreadPoolExecutor`` hands work to whichever idle thread
its queue wakes, so with two compute threads consecutive lone batches
alternated between two teams; the team just left kept spinning on the cores
(libgomp spins before it sleeps) while the other one started, and the HTTP
workers waited for CPU. Measured on MiniLM, one sentence per request at
concurrency 1 through the two-worker server: 12.5-13.7 ms p50 with the
alternation, 7.9 ms with one compute thread.

So each compute thread here has its own single-thread executor, and a call goes
to the free thread with the lowest index (the least busy one when none is
free): alone, every batch runs on thread 0 and its warm team; under load the
other threads take the concurrent batches, as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class ComputePool(Executor):
    def __init__(self, threads: int, thread_name_prefix: str = "maas-compute") -> None:
        if threads < 1:
            raise ValueError("a compute pool needs at least one thread")
        self._pools = [
            ThreadPoolExecutor(1, thread_name_prefix=f"{thread_name_prefix}-{index}")
            for index in range(threads)
        ]
        self._busy = [0] * threads  # calls submitted and not finished, per thread
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        with self._lock:
            index = min(range(len(self._pools)), key=lambda i: (self._busy[i], i))
            self._busy[index] += 1
        try:
            future = self._pools[index].submit(fn, *args, **kwargs)
        except BaseException:
            self._finished(index)
            raise
        # Added before any caller's callback, so a thread counts as free again
        # before the caller learns the result and submits its next call.
        future.add_done_callback(lambda _: self._finished(index))
        return future

    def _finished(self, index: int) -> None:
        with self._lock:
            self._busy[index] -= 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        for pool in self._pools:
            pool.shutdown(wait=wait, cancel_futures=cancel_futures)
