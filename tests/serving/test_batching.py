"""AdaptiveBatcher: batching, per-caller results, failures, cancellation, backpressure, close."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import pytest

from maas.errors import InvalidRequestError, UnavailableError
from maas.serving.batching import AdaptiveBatcher, BatchContext, BatchStats


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main`` on a fresh loop and fail on anything asyncio would only log
    (e.g. "Future exception was never retrieved"), which -W error cannot see."""
    problems: list[dict[str, Any]] = []

    async def wrapper() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: problems.append(ctx))
        await main()

    asyncio.run(wrapper())
    gc.collect()  # unretrieved-exception reports fire when futures are collected
    assert problems == []


class Doubler:
    """A real batch handler: x -> 2x, recording every batch it was given."""

    def __init__(self, fail_on: frozenset[int] = frozenset()) -> None:
        self.batches: list[list[int]] = []
        self.contexts: list[BatchContext] = []
        self.fail_on = fail_on
        self.release = asyncio.Event()  # set it to let a gated batch finish
        self.gated = False
        self.entered = asyncio.Event()

    async def __call__(
        self, items: list[int], context: BatchContext
    ) -> Sequence[int | BaseException]:
        self.batches.append(items)
        self.contexts.append(context)
        self.entered.set()
        if self.gated:
            await self.release.wait()
        await asyncio.sleep(0.001)  # stands in for compute offloaded to a thread
        return [ValueError(f"bad {x}") if x in self.fail_on else x * 2 for x in items]

    @property
    def seen(self) -> list[int]:
        return [x for batch in self.batches for x in batch]


async def until(condition: Callable[[], bool]) -> None:
    """Yield until ``condition`` holds; it reads public state that has no event to await."""
    async with asyncio.timeout(1):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0)


def test_concurrent_submits_form_batches_and_each_caller_gets_its_own_result() -> None:
    async def main() -> None:
        stats: list[BatchStats] = []
        handler = Doubler()
        batcher = AdaptiveBatcher(handler, max_batch_size=16, on_batch=stats.append)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(50)))
        await batcher.close()
        assert results == [i * 2 for i in range(50)]
        assert sum(s.size for s in stats) == 50
        assert max(s.size for s in stats) > 1
        assert all(s.size <= 16 for s in stats)
        assert sorted(handler.seen) == list(range(50))

    run(main)


def test_max_batch_size_is_never_exceeded() -> None:
    async def main() -> None:
        handler = Doubler()
        batcher = AdaptiveBatcher(handler, max_batch_size=4, max_wait_ms=50)
        await asyncio.gather(*(batcher.submit(i) for i in range(30)))
        await batcher.close()
        assert [len(b) for b in handler.batches] == [4] * 7 + [2]

    run(main)


def test_batch_stats_report_size_wait_and_compute() -> None:
    async def main() -> None:
        stats: list[BatchStats] = []
        batcher = AdaptiveBatcher(Doubler(), max_batch_size=8, on_batch=stats.append)
        await asyncio.gather(*(batcher.submit(i) for i in range(8)))
        await batcher.close()
        (only,) = stats
        assert only.size == 8
        assert 0 <= only.queue_wait_seconds < 1
        assert 0.001 <= only.compute_seconds < 1
        with pytest.raises(dataclasses.FrozenInstanceError):
            only.size = 1  # type: ignore[misc]

    run(main)


def test_lone_request_is_dispatched_without_waiting_out_max_wait() -> None:
    async def main() -> None:
        # With nobody else submitting, a long max_wait must not delay the request.
        batcher = AdaptiveBatcher(Doubler(), max_wait_ms=10_000)
        started = time.monotonic()
        async with asyncio.timeout(1):
            assert await batcher.submit(21) == 42
        assert time.monotonic() - started < 1
        await batcher.close()

    run(main)


def test_lone_request_under_short_max_wait_is_served_promptly() -> None:
    async def main() -> None:
        batcher = AdaptiveBatcher(Doubler(), max_wait_ms=20)
        await asyncio.gather(batcher.submit(1), batcher.submit(2))  # looks concurrent now
        started = time.monotonic()
        assert await batcher.submit(3) == 6  # waits at most ~20 ms for company
        assert time.monotonic() - started < 1
        await batcher.close()

    run(main)


def test_under_concurrent_traffic_the_batch_waits_for_a_straggler() -> None:
    async def main() -> None:
        handler = Doubler()
        batcher = AdaptiveBatcher(handler, max_batch_size=2, max_wait_ms=2_000)
        await asyncio.gather(batcher.submit(1), batcher.submit(2))  # two callers at once
        first = asyncio.create_task(batcher.submit(10))
        await asyncio.sleep(0.02)
        second = asyncio.create_task(batcher.submit(11))
        assert list(await asyncio.gather(first, second)) == [20, 22]
        assert handler.batches == [[1, 2], [10, 11]]
        await batcher.close()

    run(main)


def test_exception_in_one_result_slot_fails_only_that_item() -> None:
    async def main() -> None:
        handler = Doubler(fail_on=frozenset({3}))
        batcher = AdaptiveBatcher(handler, max_batch_size=8)
        results = await asyncio.gather(
            *(batcher.submit(i) for i in range(6)), return_exceptions=True
        )
        await batcher.close()
        assert len(handler.batches) == 1
        assert isinstance(results[3], ValueError) and str(results[3]) == "bad 3"
        assert [r for i, r in enumerate(results) if i != 3] == [0, 2, 4, 8, 10]

    run(main)


def test_handler_exception_fails_every_item_of_the_batch() -> None:
    async def main() -> None:
        boom = RuntimeError("model crashed")

        async def broken(items: list[int], _: BatchContext) -> list[int]:
            raise boom

        batcher = AdaptiveBatcher(broken, max_batch_size=8)
        results = await asyncio.gather(
            *(batcher.submit(i) for i in range(5)), return_exceptions=True
        )
        assert all(r is boom for r in results)
        await batcher.close()

    run(main)


def test_wrong_number_of_results_fails_the_batch_with_runtime_error() -> None:
    async def main() -> None:
        async def short(items: list[int], _: BatchContext) -> list[int]:
            return items[:-1]

        batcher = AdaptiveBatcher(short, max_batch_size=8, name="m:1")
        results = await asyncio.gather(
            *(batcher.submit(i) for i in range(3)), return_exceptions=True
        )
        await batcher.close()
        for result in results:
            assert isinstance(result, RuntimeError)
            assert "returned 2 results for 3 items" in str(result)
            assert "m:1" in str(result)

    run(main)


def test_cancelled_queued_item_never_reaches_the_handler() -> None:
    async def main() -> None:
        handler = Doubler()
        handler.gated = True
        batcher = AdaptiveBatcher(handler, max_batch_size=1)
        running = asyncio.create_task(batcher.submit(1))
        await handler.entered.wait()
        queued = asyncio.create_task(batcher.submit(2))
        await until(lambda: batcher.queue_depth == 1)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert batcher.queue_depth == 0
        handler.release.set()
        assert await running == 2
        assert await batcher.submit(3) == 6
        await batcher.close()
        assert handler.seen == [1, 3]

    run(main)


def test_item_cancelled_while_its_batch_forms_never_reaches_the_handler() -> None:
    async def main() -> None:
        handler = Doubler()
        batcher = AdaptiveBatcher(handler, max_batch_size=3, max_wait_ms=2_000)
        await asyncio.gather(*(batcher.submit(i) for i in (1, 2, 3)))  # looks concurrent now
        early = asyncio.create_task(batcher.submit(10))
        await until(lambda: batcher.queue_depth == 1)  # queued
        await until(lambda: batcher.queue_depth == 0)  # taken into the forming batch
        early.cancel()
        late = [asyncio.create_task(batcher.submit(i)) for i in (11, 12)]  # fills the batch
        assert await asyncio.gather(*late) == [22, 24]
        await batcher.close()
        assert 10 not in handler.seen
        assert early.cancelled()

    run(main)


def test_cancelled_running_item_drops_its_result_quietly() -> None:
    async def main() -> None:
        handler = Doubler(fail_on=frozenset({1}))
        handler.gated = True
        batcher = AdaptiveBatcher(handler, max_batch_size=4)
        failing = asyncio.create_task(batcher.submit(1))
        passing = asyncio.create_task(batcher.submit(2))
        await handler.entered.wait()
        failing.cancel()
        passing.cancel()
        handler.release.set()
        await asyncio.gather(failing, passing, return_exceptions=True)
        assert await batcher.submit(5) == 10  # the worker carries on
        await batcher.close()

    run(main)


def test_queue_full_raises_unavailable_without_queueing() -> None:
    async def main() -> None:
        handler = Doubler()
        handler.gated = True
        batcher = AdaptiveBatcher(handler, max_batch_size=1, max_queue=2)
        running = asyncio.create_task(batcher.submit(0))
        await handler.entered.wait()
        waiting = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
        await until(lambda: batcher.queue_depth == 2)
        with pytest.raises(UnavailableError, match="queue full") as info:
            await batcher.submit(3)
        assert info.value.status == 503
        with pytest.raises(UnavailableError):
            await batcher.submit_many([4])
        assert batcher.queue_depth == 2
        handler.release.set()
        assert await asyncio.gather(running, *waiting) == [0, 2, 4]
        await batcher.close()
        assert 3 not in handler.seen and 4 not in handler.seen

    run(main)


def test_close_finishes_queued_work_then_rejects_and_stops_the_worker() -> None:
    async def main() -> None:
        handler = Doubler()
        batcher = AdaptiveBatcher(handler, max_batch_size=3, max_wait_ms=1_000)
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(10)]
        await asyncio.sleep(0)  # all ten are queued or in the first batch
        started = time.monotonic()
        await batcher.close()
        assert time.monotonic() - started < 1  # closing does not sit out max_wait
        assert [t.result() for t in tasks] == [i * 2 for i in range(10)]
        with pytest.raises(UnavailableError, match="shutting down"):
            await batcher.submit(99)
        assert asyncio.all_tasks() == {asyncio.current_task()}

    run(main)


def test_close_of_an_idle_or_unused_batcher_returns_promptly() -> None:
    async def main() -> None:
        await AdaptiveBatcher(Doubler()).close()
        batcher = AdaptiveBatcher(Doubler())
        assert await batcher.submit(1) == 2
        async with asyncio.timeout(1):
            await batcher.close()
        assert asyncio.all_tasks() == {asyncio.current_task()}

    run(main)


def test_submit_many_keeps_order_across_batch_boundaries() -> None:
    async def main() -> None:
        handler = Doubler()
        batcher = AdaptiveBatcher(handler, max_batch_size=4)
        first, second = await asyncio.gather(
            batcher.submit_many(list(range(10))), batcher.submit_many(list(range(100, 107)))
        )
        await batcher.close()
        assert first == [i * 2 for i in range(10)]
        assert second == [i * 2 for i in range(100, 107)]
        assert len(handler.batches) >= 5 and all(len(b) <= 4 for b in handler.batches)
        assert await AdaptiveBatcher(handler).submit_many([]) == []

    run(main)


def test_submit_many_raises_the_first_failure_and_skips_its_queued_items() -> None:
    async def main() -> None:
        handler = Doubler(fail_on=frozenset({1, 2}))
        batcher = AdaptiveBatcher(handler, max_batch_size=4)
        # 1 and 2 fail in the same batch: the caller sees 1; 2's error must not be
        # reported as "never retrieved" (run() checks), and 8, 9 are still queued.
        with pytest.raises(ValueError, match="bad 1"):
            await batcher.submit_many(list(range(10)))
        assert await batcher.submit(7) == 14
        await batcher.close()
        assert 8 not in handler.seen and 9 not in handler.seen

    run(main)


def test_on_batch_failure_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def broken_metrics(stats: BatchStats) -> None:
        raise RuntimeError("metrics down")

    async def main() -> None:
        batcher = AdaptiveBatcher(Doubler(), on_batch=broken_metrics, name="m:1")
        assert await batcher.submit(4) == 8
        await batcher.close()

    with caplog.at_level(logging.ERROR, logger="maas.serving.batching"):
        run(main)
    assert "on_batch callback failed" in caplog.text


@pytest.mark.parametrize(
    "bad",
    [
        {"max_batch_size": 0},
        {"max_queue": 0},
        {"max_wait_ms": -1},
        {"max_concurrent_batches": 0},
        {"cores": -1},
    ],
)
def test_invalid_settings_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        AdaptiveBatcher(Doubler(), **bad)


def test_a_failed_item_is_named_by_its_position_in_its_own_request() -> None:
    async def handler(items: list[int], _: BatchContext) -> list[int | BaseException]:
        return [InvalidRequestError("negative") if i < 0 else i * 2 for i in items]

    async def scenario() -> tuple[list[int], str]:
        batcher: AdaptiveBatcher[int, int] = AdaptiveBatcher(handler, max_wait_ms=20)
        try:
            # Both requests share one batch: the bad item sits at batch position 4
            # but at position 1 of its own request.
            good, bad = await asyncio.gather(
                batcher.submit_many([1, 2, 3]),
                batcher.submit_many([4, -5, 6]),
                return_exceptions=True,
            )
            assert isinstance(good, list)
            assert isinstance(bad, InvalidRequestError)
            return good, bad.message
        finally:
            await batcher.close()

    good, message = asyncio.run(scenario())
    assert good == [2, 4, 6]
    assert message == "input[1]: negative"


def test_batches_overlap_up_to_the_concurrency_limit() -> None:
    running = 0
    peak = 0

    async def handler(items: list[int], _: BatchContext) -> list[int]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        return [i * 10 for i in items]

    async def scenario(slots: int) -> list[int]:
        batcher: AdaptiveBatcher[int, int] = AdaptiveBatcher(
            handler, max_batch_size=2, max_wait_ms=0, max_concurrent_batches=slots
        )
        try:
            return list(await asyncio.gather(*(batcher.submit(i) for i in range(8))))
        finally:
            await batcher.close()

    assert asyncio.run(scenario(1)) == [i * 10 for i in range(8)]
    assert peak == 1
    peak = 0
    assert asyncio.run(scenario(2)) == [i * 10 for i in range(8)]
    assert peak == 2


def test_a_lone_batch_may_use_every_core() -> None:
    async def main() -> None:
        handler = Doubler()
        batcher = AdaptiveBatcher(handler, max_concurrent_batches=2, cores=4)
        assert await batcher.submit(1) == 2
        assert await batcher.submit_many([2, 3]) == [4, 6]
        await batcher.close()
        assert handler.contexts == [BatchContext(in_flight=1, threads=4)] * 2

    run(main)


def test_batches_in_flight_split_the_cores() -> None:
    async def main() -> None:
        handler = Doubler()
        handler.gated = True
        batcher = AdaptiveBatcher(handler, max_batch_size=1, max_concurrent_batches=3, cores=4)
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
        await until(lambda: len(handler.batches) == 3)  # all three computing at once
        handler.release.set()
        assert await asyncio.gather(*tasks) == [0, 2, 4]
        assert await batcher.submit(7) == 14  # alone again: every core
        await batcher.close()
        # Each share is fixed when its batch starts: 4 // 1, 4 // 2, 4 // 3.
        assert [(c.in_flight, c.threads) for c in handler.contexts] == [
            (1, 4),
            (2, 2),
            (3, 1),
            (1, 4),
        ]

    run(main)


def test_more_batches_in_flight_than_cores_still_get_one_thread_each() -> None:
    async def main() -> None:
        handler = Doubler()
        handler.gated = True
        batcher = AdaptiveBatcher(handler, max_batch_size=1, max_concurrent_batches=3, cores=2)
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
        await until(lambda: len(handler.batches) == 3)
        handler.release.set()
        await asyncio.gather(*tasks)
        await batcher.close()
        assert [c.threads for c in handler.contexts] == [2, 1, 1]

    run(main)


def test_without_a_core_budget_the_handler_keeps_its_own_threads() -> None:
    async def main() -> None:
        handler = Doubler()
        batcher = AdaptiveBatcher(handler)
        assert await batcher.submit(1) == 2
        await batcher.close()
        assert handler.contexts == [BatchContext(in_flight=1, threads=0)]

    run(main)


def test_a_failed_batch_gives_its_cores_back() -> None:
    async def main() -> None:
        calls: list[BatchContext] = []

        async def flaky(items: list[int], context: BatchContext) -> list[int]:
            calls.append(context)
            if len(calls) == 1:
                raise RuntimeError("model crashed")
            return items

        batcher = AdaptiveBatcher(flaky, cores=2)
        with pytest.raises(RuntimeError):
            await batcher.submit(1)
        assert await batcher.submit(2) == 2
        await batcher.close()
        assert [c.threads for c in calls] == [2, 2]

    run(main)
