"""AdaptiveBatcher: turns many concurrent per-item calls into a few batched calls.

Each loaded model owns one batcher; the data plane awaits ``submit`` (one item)
or ``submit_many`` (the items of one request) and a single background worker
feeds the model's batch handler.

Batching policy, per batch:

1. Wait for the first item, then take everything already queued, up to
   ``max_batch_size``. A full batch goes out at once: under load the queue
   holds enough work, and waiting would only add latency.
2. Otherwise yield to the event loop once, so that callers that are already
   runnable (a burst of requests parsed in the same loop turn) get in too.
3. Still not full: wait for stragglers only if traffic looks concurrent, that
   is if the batch so far, or the previous batch, held items from more than one
   request. A lone request with nobody else around is dispatched now, since
   nobody is coming to share its batch. Waiting stops when the batch is full or
   ``max_wait_ms`` after the *first* item arrived; because that deadline is
   anchored on arrival, items that already queued while the model was busy
   never wait again.

Up to ``max_concurrent_batches`` batches run at once (the server uses one per
compute thread): the next batch starts forming only when a slot is free, so
items arriving while every slot computes join it rather than a batch of one.

Threads follow load. With ``cores`` set, the handler learns, through the
``BatchContext`` it receives, how many intra-op threads its batch may use:
``cores // in_flight`` (at least 1), where ``in_flight`` counts this
batcher's batches computing at that moment, this one included. A lone batch
gets every core; two batches in flight get half each, so concurrent batches
share the cores instead of oversubscribing them. The share is fixed when a
batch starts: a batch that starts beside one already running on every core
takes its half while the first keeps its threads until it ends, so the cores
are oversubscribed by that half for the overlap (2 + 1 threads on 2 cores ran
MiniLM within 5% of 1 + 1; 2 + 2 was 6-22% slower). The count is per
batcher: two models busy at once each take every core. Measured on MiniLM,
2 cores, quiet: a lone batch is 1.4-1.5x faster, two batches in flight as
fast as before (docs/batching.md).

Length grouping. With a ``length`` key (for text: an estimate of the item's
tokens), a batch formed while the queue holds more than fits takes items of
similar length rather than the oldest ones, so its rows pad little:

* the oldest queued item always goes in the next batch, so no item waits
  behind a stream of better-fitting ones: an item leaves after at most as
  many batches as there are items ahead of it;
* the others are the run of neighbours, in length order among the oldest
  ``LOOKAHEAD_BATCHES`` batches' worth of queued items, that adds the fewest
  padded tokens (for a given longest item the best choice is the longest
  items not longer than it, so sorting and one sliding sum find it);
* when everything queued fits, nothing is reordered, and the wait policy above
  is unchanged: the deadline stays anchored on the oldest item.

``BatchStats.padding_ratio`` reports, per batch, padded ÷ real length units
(0 = no padding) for the ``maas_batch_padding_ratio`` histogram. On a mixed
backlog through MiniLM (batches of 32) grouping cut padded ÷ real tokens from
2.15 to 0.78 and raised throughput 1.6x (docs/batching.md).

Results go back through each caller's own future, so responses never cross.
Backpressure: past ``max_queue`` waiting items a submit fails at once with
``UnavailableError`` (HTTP 503) instead of growing latency without bound.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from maas.errors import InvalidRequestError, UnavailableError

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)

# How far past the oldest item length grouping looks, in batches: wider groups
# better but lets an item be overtaken by more of its juniors.
LOOKAHEAD_BATCHES = 4


@dataclass(frozen=True, slots=True)
class BatchContext:
    """What the batcher knows about a batch as it hands it to the handler."""

    in_flight: int  # this batcher's batches computing now, this one included (>= 1)
    threads: int  # intra-op threads this batch may use; 0 = no core budget, keep your own


@dataclass(frozen=True, slots=True)
class BatchStats:
    """What one batch cost, for metrics."""

    size: int
    queue_wait_seconds: float  # longest time an item of the batch sat in the queue
    compute_seconds: float  # time spent inside the handler
    padding_ratio: float | None = None  # padded / real length units; None without a length key


@dataclass(slots=True)
class RequestCost:
    """What one request's items cost, filled in by the batcher (for usage metering)."""

    queue_seconds: float = 0.0  # longest wait of any of its items
    compute_seconds: float = 0.0  # its share of each batch: batch time / batch size per item


@dataclass(eq=False, slots=True)
class _Item(Generic[T, R]):
    value: T
    future: asyncio.Future[R]
    request: int  # which submit call the item came from; drives the wait policy
    enqueued: float  # time.monotonic() at submit
    cost: RequestCost | None = None
    length: int = 0  # the length key's value; 0 without one


BatchHandler = Callable[[list[T], BatchContext], Awaitable[Sequence[R | BaseException]]]


class AdaptiveBatcher(Generic[T, R]):
    """Batch concurrent calls to ``handler`` (see the module docstring for the policy).

    ``handler(items, context)`` receives a list of items and returns one result
    per item, in order; a result that is an exception fails only that item's
    caller. ``cores`` (0 = no budget) is what the batches in flight share, and
    ``length`` (cheap: it runs on the event loop for every submitted item) turns
    on length grouping.
    """

    def __init__(
        self,
        handler: BatchHandler[T, R],
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 10_000,
        max_concurrent_batches: int = 1,
        cores: int = 0,
        length: Callable[[T], int] | None = None,
        on_batch: Callable[[BatchStats], None] | None = None,
        name: str = "",
    ) -> None:
        if (
            max_batch_size < 1
            or max_queue < 1
            or max_wait_ms < 0
            or max_concurrent_batches < 1
            or cores < 0
        ):
            raise ValueError(
                "need max_batch_size >= 1, max_queue >= 1, max_wait_ms >= 0, "
                "max_concurrent_batches >= 1 and cores >= 0"
            )
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_wait_seconds = max_wait_ms / 1000
        self.max_queue = max_queue
        self.max_concurrent_batches = max_concurrent_batches
        self.cores = cores
        self._handler = handler
        self._length = length
        self._on_batch = on_batch
        self._who = f"model {name}" if name else "batcher"
        # Keyed by a sequence number: O(1) removal when a queued caller cancels,
        # O(1) pop of the oldest item for the worker.
        self._queue: OrderedDict[int, _Item[T, R]] = OrderedDict()
        self._next_key = 0
        self._next_request = 0
        self._previous_requests = 1  # requests in the last batch; 1 = assume quiet traffic
        self._in_flight = 0  # batches inside the handler now
        self._closed = False
        self._worker: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()

    @property
    def queue_depth(self) -> int:
        """Items waiting for a batch (not counting the batch being formed or computed)."""
        return len(self._queue)

    async def submit(self, item: T, cost: RequestCost | None = None) -> R:
        """Run one item through the handler and return its result."""
        (future,) = self._enqueue([item], cost)
        return await future

    async def submit_many(self, items: Sequence[T], cost: RequestCost | None = None) -> list[R]:
        """Run the items of one request, possibly over several batches; results in order."""
        futures = self._enqueue(items, cost)
        results: list[R] = []
        try:
            for index, future in enumerate(futures):
                try:
                    results.append(await future)
                except InvalidRequestError as exc:
                    # The runtime saw a batch position; the caller knows its own items.
                    raise type(exc)(f"input[{index}]: {exc.message}", param=exc.param) from exc
            return results
        finally:
            # After a failure or cancellation the request is over: its items that
            # are still queued must not cost model time (no-op on settled ones).
            for future in futures:
                future.cancel()

    async def close(self) -> None:
        """Refuse new items, finish the queued ones, then stop the worker."""
        self._closed = True
        worker = self._worker
        if worker is None or worker.done():
            return
        self._arrived.set()  # an idle worker must wake up to notice
        # Shielded: a caller giving up on close() must not kill a draining worker.
        await asyncio.shield(worker)

    def _enqueue(
        self, values: Sequence[T], cost: RequestCost | None = None
    ) -> list[asyncio.Future[R]]:
        if self._closed:
            raise UnavailableError(f"{self._who} is shutting down; retry later")
        if len(self._queue) + len(values) > self.max_queue:
            # All or nothing, so a request is never half-queued.
            raise UnavailableError(
                f"{self._who} queue full ({len(self._queue)} of {self.max_queue} items "
                "waiting); retry later"
            )
        # Before anything is queued, so that a length key that raises fails this
        # submit alone and leaves nothing behind.
        lengths = [self._length(v) for v in values] if self._length else [0] * len(values)
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._arrived = asyncio.Event()  # an Event binds to one loop; start fresh
            self._worker = loop.create_task(self._run(), name=f"batcher {self.name}")
        request, self._next_request = self._next_request, self._next_request + 1
        now = time.monotonic()
        futures: list[asyncio.Future[R]] = []
        for value, length in zip(values, lengths, strict=True):
            key, self._next_key = self._next_key, self._next_key + 1
            future: asyncio.Future[R] = loop.create_future()
            future.add_done_callback(functools.partial(self._settled, key))
            self._queue[key] = _Item(value, future, request, now, cost, length)
            futures.append(future)
        if futures:
            self._arrived.set()
        return futures

    def _settled(self, key: int, future: asyncio.Future[R]) -> None:
        # A caller cancelled while queued: drop the item so it never reaches the
        # handler and stops counting against max_queue.
        self._queue.pop(key, None)
        # Backstop: whoever awaited this future may be gone by the time it fails;
        # mark the exception read so asyncio never logs "Future exception was never
        # retrieved". Callers still awaiting it receive it as usual.
        if not future.cancelled():
            future.exception()

    def _take(self, limit: int, batch: list[_Item[T, R]]) -> list[_Item[T, R]]:
        """Up to ``limit`` queued items to add to ``batch``: the oldest, or grouped by length.

        Afterwards either ``batch`` plus the result is full or the queue is empty.
        """
        if self._length is not None and len(self._queue) > limit:
            return [self._queue.pop(key) for key in self._pick_by_length(limit, batch)]
        taken: list[_Item[T, R]] = []
        while self._queue and len(taken) < limit:
            taken.append(self._queue.popitem(last=False)[1])
        return taken

    def _pick_by_length(self, limit: int, batch: list[_Item[T, R]]) -> list[int]:
        """Keys of the ``limit`` queued items that pad least beside ``batch``, oldest first.

        Needs more than ``limit`` items queued (otherwise all of them go anyway).
        """
        window = list(
            itertools.islice(self._queue.items(), LOOKAHEAD_BATCHES * self.max_batch_size)
        )
        fixed = [item.length for item in batch]
        chosen: list[int] = []
        if not batch:
            # The oldest item always goes: nothing starves behind better-fitting juniors.
            (oldest_key, oldest), *window = window
            chosen.append(oldest_key)
            fixed.append(oldest.length)
            limit -= 1
        if limit > 0:
            ranked = sorted(
                window, key=lambda pair: pair[1].length
            )  # stable: ties stay in age order
            lengths = [item.length for _, item in ranked]
            size = len(fixed) + limit
            longest_fixed, fixed_sum = max(fixed, default=0), sum(fixed)
            # Padded units of a batch = size * its longest item - its real units. For a
            # given longest item the best companions are the longest items no longer than
            # it, i.e. `limit` neighbours in length order: slide over those runs.
            run_sum = sum(lengths[:limit])
            best_start = 0
            best_padding = size * max(longest_fixed, lengths[limit - 1]) - fixed_sum - run_sum
            for start in range(1, len(ranked) - limit + 1):
                end = start + limit - 1  # the run's longest item
                run_sum += lengths[end] - lengths[start - 1]
                padding = size * max(longest_fixed, lengths[end]) - fixed_sum - run_sum
                if padding < best_padding:
                    best_start, best_padding = start, padding
            chosen += [key for key, _ in ranked[best_start : best_start + limit]]
        return sorted(chosen)  # keys grow with arrival: hand the batch over oldest first

    async def _dispatch_in_slot(self, batch: list[_Item[T, R]], slots: asyncio.Semaphore) -> None:
        try:
            await self._dispatch(batch)
        finally:
            slots.release()

    async def _run(self) -> None:
        batch: list[_Item[T, R]] = []
        slots = asyncio.Semaphore(self.max_concurrent_batches)
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                if not self._queue:
                    if self._closed:
                        if running:
                            await asyncio.gather(*running, return_exceptions=True)
                        return
                    self._arrived.clear()
                    await self._arrived.wait()
                    continue
                # Wait for a free compute slot before forming the batch, so that
                # items arriving meanwhile join it instead of a batch of their own.
                await slots.acquire()
                if not self._queue:
                    slots.release()
                    continue
                batch = await self._collect()
                task = asyncio.get_running_loop().create_task(self._dispatch_in_slot(batch, slots))
                running.add(task)
                task.add_done_callback(running.discard)
                batch = []
        except BaseException:
            # Cancelled (loop shutdown, unload) or a bug: nobody may wait forever.
            for task in running:
                task.cancel()
            stranded = [*batch, *self._queue.values()]
            self._queue.clear()
            for item in stranded:
                if not item.future.done():
                    item.future.set_exception(UnavailableError(f"{self._who} stopped serving"))
            raise

    async def _collect(self) -> list[_Item[T, R]]:
        deadline = next(iter(self._queue.values())).enqueued + self.max_wait_seconds
        batch = self._take(self.max_batch_size, [])
        if len(batch) < self.max_batch_size:
            await asyncio.sleep(0)
            batch += self._take(self.max_batch_size - len(batch), batch)
        concurrent = self._previous_requests > 1 or len({i.request for i in batch}) > 1
        while concurrent and len(batch) < self.max_batch_size and not self._closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._arrived.clear()  # the queue is empty here: _take got all of it
            try:
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()
            except TimeoutError:
                break
            batch += self._take(self.max_batch_size - len(batch), batch)
        # Callers that cancelled while their item was being collected.
        return [item for item in batch if not item.future.done()]

    async def _dispatch(self, batch: list[_Item[T, R]]) -> None:
        if not batch:
            return
        started = time.monotonic()
        queue_wait = started - min(item.enqueued for item in batch)
        self._previous_requests = len({item.request for item in batch})
        self._in_flight += 1
        context = BatchContext(
            in_flight=self._in_flight,
            threads=max(1, self.cores // self._in_flight) if self.cores else 0,
        )
        outcomes: Sequence[R | BaseException]
        try:
            outcomes = await self._handler([item.value for item in batch], context)
        except Exception as exc:
            outcomes = [exc] * len(batch)
        else:
            if len(outcomes) != len(batch):
                mismatch = RuntimeError(
                    f"{self._who} batch handler returned {len(outcomes)} results "
                    f"for {len(batch)} items"
                )
                outcomes = [mismatch] * len(batch)
        finally:
            self._in_flight -= 1
        compute = time.monotonic() - started
        for item in batch:
            if item.cost is not None:
                item.cost.queue_seconds = max(item.cost.queue_seconds, started - item.enqueued)
                item.cost.compute_seconds += compute / len(batch)
        for item, outcome in zip(batch, outcomes, strict=True):
            if item.future.done():
                continue  # the caller went away while we computed; drop its result
            if isinstance(outcome, BaseException):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)
        if self._on_batch is not None:
            stats = BatchStats(len(batch), queue_wait, compute, self._padding_ratio(batch))
            try:
                self._on_batch(stats)
            except Exception:
                # Metrics must never break serving.
                log.exception("%s: on_batch callback failed", self._who)

    def _padding_ratio(self, batch: list[_Item[T, R]]) -> float | None:
        """Padded / real length units when every row is padded to the batch's longest."""
        if self._length is None:
            return None
        real = sum(item.length for item in batch)
        padded = len(batch) * max(item.length for item in batch) - real
        return padded / real if real > 0 else 0.0
