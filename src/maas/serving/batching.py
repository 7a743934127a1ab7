"""AdaptiveBatcher: turns many concurrent single-item calls into batched calls.

Policy: a worker takes the first queued item, then keeps collecting until the
batch is full or ``max_wait_ms`` has passed since that first item arrived.
Under load the queue already holds a full batch and nothing waits; when one
request is alone it waits at most ``max_wait_ms``. Results return to each
caller's own future, so responses never cross. An item the handler marks as
failed (by returning an exception in its slot) fails only its own caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from maas.errors import UnavailableError

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger("maas.serving.batching")


@dataclass(frozen=True, slots=True)
class BatchStats:
    size: int
    queue_wait_seconds: float
    compute_seconds: float


@dataclass(slots=True)
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    enqueued: float


class AdaptiveBatcher(Generic[T, R]):
    def __init__(
        self,
        handler: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]],
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 10_000,
        on_batch: Callable[[BatchStats], None] | None = None,
        name: str = "",
    ) -> None:
        self._handler = handler
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self._on_batch = on_batch
        self.name = name
        self._queue: asyncio.Queue[_Pending[T, R]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._busy = False

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def _ensure_worker(self) -> asyncio.Queue[_Pending[T, R]]:
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run())
        return self._queue

    def _enqueue(self, item: T) -> asyncio.Future[R]:
        if self._closed:
            raise UnavailableError(f"model {self.name} is shutting down")
        queue = self._ensure_worker()
        if queue.qsize() >= self.max_queue:
            raise UnavailableError(
                f"model {self.name} queue full ({self.max_queue} items waiting); retry later"
            )
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        queue.put_nowait(_Pending(item, future, time.monotonic()))
        return future

    async def submit(self, item: T) -> R:
        return await self._enqueue(item)

    async def submit_many(self, items: Sequence[T]) -> list[R]:
        futures = [self._enqueue(item) for item in items]
        try:
            return list(await asyncio.gather(*futures))
        except BaseException:
            for f in futures:
                if f.done() and not f.cancelled():
                    f.exception()  # mark retrieved: one failure already reached the caller
                else:
                    f.cancel()  # queued siblings are skipped by the worker
            raise

    async def _collect(self, queue: asyncio.Queue[_Pending[T, R]]) -> list[_Pending[T, R]]:
        first = await queue.get()
        batch = [first]
        deadline = first.enqueued + self.max_wait
        while len(batch) < self.max_batch_size:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except TimeoutError:
                break
            except asyncio.CancelledError:
                for p in batch:  # shutting down mid-collection: never leave a caller hanging
                    if not p.future.done():
                        p.future.set_exception(UnavailableError(f"model {self.name} unloaded"))
                raise
        return batch

    async def _run(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            batch = [p for p in await self._collect(queue) if not p.future.done()]
            if not batch:
                if self._closed and queue.empty():
                    return
                continue
            started = time.monotonic()
            wait = max(started - p.enqueued for p in batch)
            self._busy = True
            try:
                results = await self._handler([p.item for p in batch])
                if len(results) != len(batch):
                    raise RuntimeError(
                        f"batch handler returned {len(results)} results for {len(batch)} items"
                    )
            except Exception as exc:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
            else:
                for p, result in zip(batch, results, strict=True):
                    if p.future.done():
                        continue  # the caller went away; drop its result
                    if isinstance(result, BaseException):
                        p.future.set_exception(result)
                    else:
                        p.future.set_result(result)
            finally:
                self._busy = False
            if self._on_batch is not None:
                try:
                    self._on_batch(BatchStats(len(batch), wait, time.monotonic() - started))
                except Exception:
                    log.exception("batch metrics callback failed")
            if self._closed and queue.empty():
                return

    async def close(self) -> None:
        """Refuse new items, let queued ones finish, stop the worker."""
        self._closed = True
        if self._worker is None:
            return
        # Idle on an empty queue the worker would wait forever; busy, it returns
        # by itself once the queue is drained.
        if not self._busy and (self._queue is None or self._queue.empty()):
            self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
