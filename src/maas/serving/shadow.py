"""ShadowMirror: sends copies of answered requests to a shadow version, off the caller's path.

A routing policy's ``shadow`` (``registry.routing``) names a version that also
receives a fraction of a model's requests. Its answers are recorded — counted,
timed, compared with what the caller got, and handed to ``record`` (the drift
monitor, when one is composed in) — and never returned.

Policy:

* **Never slows the caller.** ``offer`` only enqueues, after the caller's own
  answer exists; it never awaits. At most ``concurrency`` mirrors run at a time
  (one by default: a shadow is a sample, not a second service), so a slow
  shadow takes at most that much of the machine.
* **Bounded.** At most ``capacity`` mirrors wait; an offer beyond that is
  dropped and counted (``maas_shadow_requests_total{outcome="dropped"}``), so a
  shadow that cannot keep up loses samples, never memory.
* **Never counted against the caller.** Mirrors bypass admission: no rate
  limit, quota or usage record sees them; they are metered as shadow traffic.
* **Outcomes.** ``ok`` or ``error`` per mirror, its latency, and for the
  answers that can be compared item by item (a classifier's labels) whether
  the shadow agreed with the answer the caller got
  (``maas_shadow_agreement_total{agree}``), and, with a ``ComparisonRecorder``
  composed in, the same counts in the registry: the agreement a rollout judges.

``close`` cancels what is waiting or running (shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from maas.registry.batch_writer import BatchWriter
from maas.registry.db import Database
from maas.registry.models import utcnow
from maas.registry.rollout_figures import Comparison, write_comparisons
from maas.registry.schemas import VersionInfo
from maas.serving.metrics import ServingMetrics

log = logging.getLogger("maas.serving")

Run = Callable[[], Awaitable[Sequence[Any]]]
Record = Callable[[VersionInfo, Sequence[Any], Sequence[Any]], None]


@dataclass(frozen=True, slots=True)
class _Mirror:
    version: VersionInfo
    items: Sequence[Any]
    answered: Sequence[Any]  # what the caller got, item by item
    run: Run
    served: VersionInfo | None  # the version that gave the caller's answer


class ComparisonRecorder:
    """Writes each compared mirror (agreeing and compared items) to the registry in
    batches, off the event loop: the agreement a rollout judges, from every instance."""

    def __init__(self, db: Callable[[], Database]) -> None:
        # The database is looked up when a batch is written, not before: a data plane made
        # over a registry that never mirrors never touches it.
        self._writer: BatchWriter[Comparison] = BatchWriter(
            lambda batch: write_comparisons(db(), batch), name="shadow comparisons writer"
        )

    def __call__(
        self, shadow: VersionInfo, served: VersionInfo, agreed: int, compared: int
    ) -> None:
        self._writer.add(
            Comparison(utcnow(), shadow.model, shadow.version, served.version, agreed, compared)
        )

    async def close(self) -> None:
        await self._writer.close()


def top_label(answer: Any) -> str | None:
    """The comparable part of one answer: a classification's best label (else None).

    Read by shape (``labels``: (label, probability) pairs, best first), not by
    class: the HTTP workers import this module, and the classification runtime's
    module would bring torch into them.
    """
    labels = getattr(answer, "labels", None)
    if isinstance(labels, list) and labels and isinstance(labels[0], tuple):
        return str(labels[0][0])
    return None


class ShadowMirror:
    def __init__(
        self,
        metrics: ServingMetrics,
        *,
        capacity: int = 64,
        concurrency: int = 1,
        record: Record | None = None,
        compared: ComparisonRecorder | None = None,
    ) -> None:
        self.metrics = metrics
        self.capacity = capacity
        self.concurrency = concurrency
        self.record = record
        self.compared = compared
        self._queue: asyncio.Queue[_Mirror] | None = None
        self._workers: list[asyncio.Task[None]] = []

    @property
    def waiting(self) -> int:
        return 0 if self._queue is None else self._queue.qsize()

    def offer(
        self,
        version: VersionInfo,
        items: Sequence[Any],
        answered: Sequence[Any],
        run: Run,
        served: VersionInfo | None = None,
    ) -> bool:
        """Queue one mirror of a request already answered (by ``served``); False (counted)
        when full."""
        if self._queue is None:
            self._start()
        assert self._queue is not None
        try:
            self._queue.put_nowait(_Mirror(version, items, answered, run, served))
        except asyncio.QueueFull:
            self._count(version, "dropped")
            return False
        return True

    def _start(self) -> None:
        self._queue = asyncio.Queue(self.capacity)
        loop = asyncio.get_running_loop()
        self._workers = [
            loop.create_task(self._work(), name=f"shadow-{i}") for i in range(self.concurrency)
        ]

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            mirror = await self._queue.get()
            try:
                await self._one(mirror)
            finally:
                self._queue.task_done()

    async def _one(self, mirror: _Mirror) -> None:
        version = mirror.version
        started = time.perf_counter()
        try:
            results = await mirror.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the shadow's own failure: counted, never the caller's
            log.info("shadow %s failed: %s", version.ref, exc)
            self._count(version, "error")
            return
        self.metrics.shadow_seconds.labels(version.model, str(version.version)).observe(
            time.perf_counter() - started
        )
        self._count(version, "ok")
        self._compare(mirror, results)
        if self.record is not None:
            try:
                self.record(version, mirror.items, results)
            except Exception:  # a recorder's bug must not stop the mirrors
                log.exception("recording the shadow answers of %s failed", version.ref)

    def _compare(self, mirror: _Mirror, got: Sequence[Any]) -> None:
        version = mirror.version
        counter = self.metrics.shadow_agreement
        labels = (version.model, str(version.version))
        agreed = compared = 0
        for mine, theirs in zip(mirror.answered, got, strict=False):
            a, b = top_label(mine), top_label(theirs)
            if a is None or b is None:
                return  # not comparable item by item (embeddings, tensors)
            counter.labels(*labels, "true" if a == b else "false").inc()
            agreed += a == b
            compared += 1
        if compared and self.compared is not None and mirror.served is not None:
            self.compared(version, mirror.served, agreed, compared)

    def _count(self, version: VersionInfo, outcome: str) -> None:
        self.metrics.shadow_requests.labels(version.model, str(version.version), outcome).inc()

    async def drain(self) -> None:
        """Wait until every queued mirror has run (tests, and a graceful stop)."""
        if self._queue is not None:
            await self._queue.join()

    async def close(self) -> None:
        workers, self._workers = self._workers, []
        for task in workers:
            task.cancel()
        for task in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._queue = None
