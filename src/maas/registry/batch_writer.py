"""BatchWriter: records queued on the event loop, written to the database in batches.

Usage records (``security.usage``) and prediction records (``serving.feedback``)
are made on the request path, where a database write must not happen. Each
recorder composes one writer; the writer's policy:

* ``add`` only appends to a list and, the first time, starts the writer task:
  it never blocks and never raises into a request;
* the task writes what is pending every ``flush_seconds``, or at once when
  ``flush_rows`` records are pending. The write runs on a worker thread but
  holds the GIL while it builds rows, so ``flush_rows`` bounds how long a write
  stalls the event loop (500 usage records every 0.5 s at 1000 requests/s were
  a 9 ms stall, the p99 of tiny V2 requests at c=1; 128 keep it near 2 ms for
  the same total work);
* a write that fails keeps its records, in order, for the next try: nothing is
  lost to a database that was down for a moment;
* ``close`` stops the task and writes what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

import anyio.to_thread

log = logging.getLogger("maas.registry")

T = TypeVar("T")

FLUSH_ROWS = 128


class BatchWriter(Generic[T]):
    def __init__(
        self,
        write: Callable[[list[T]], None],
        *,
        name: str,
        flush_seconds: float = 0.5,
        flush_rows: int = FLUSH_ROWS,
    ) -> None:
        self._write = write  # called on a worker thread with one batch
        self.name = name
        self.flush_seconds = flush_seconds
        self.flush_rows = flush_rows
        self.pending: list[T] = []  # read by the recorders (what is not written yet)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def add(self, *records: T) -> None:
        """Queue records (on the event loop); never blocks and never raises."""
        self.pending.extend(records)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)
        elif len(self.pending) >= self.flush_rows:
            self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_seconds):
                    await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def flush(self) -> int:
        """Write everything pending now; returns how many records were written."""
        batch, self.pending = self.pending, []
        if not batch:
            return 0
        try:
            await anyio.to_thread.run_sync(self._write, batch)
        except Exception:
            self.pending[:0] = batch  # kept for the next try rather than lost
            log.exception("%s: writing %d records failed; will retry", self.name, len(batch))
            return 0
        return len(batch)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
