"""AdaptiveBatcher length grouping: similar lengths batch together, the oldest item never waits."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import pytest

from maas.serving.batching import AdaptiveBatcher, BatchContext, BatchStats
from maas.serving.metrics import ServingMetrics
from tests.serving.test_batching import run, until


class Echo:
    """A real batch handler: returns each item, records every batch; gated until released."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()

    async def __call__(self, items: list[str], context: BatchContext) -> Sequence[str]:
        self.batches.append(items)
        await self.release.wait()
        return [f"echo {item}" for item in items]


def padding(batches: list[list[str]]) -> float:
    """Padded / real characters over all batches, each row padded to its batch's longest."""
    real = sum(len(item) for batch in batches for item in batch)
    padded = sum(len(batch) * max(map(len, batch)) for batch in batches) - real
    return padded / real


async def backlog(batcher: AdaptiveBatcher[str, str], handler: Echo, items: list[str]) -> None:
    """Queue ``items`` behind a first batch that holds the only compute slot, then let all run."""
    first = asyncio.create_task(batcher.submit("first"))
    await until(lambda: len(handler.batches) == 1)
    tasks = [asyncio.create_task(batcher.submit(item)) for item in items]
    await until(lambda: batcher.queue_depth == len(items))
    handler.release.set()
    results = await asyncio.gather(first, *tasks)
    assert results == [f"echo {item}" for item in ["first", *items]]  # each caller its own


def test_a_backlog_of_mixed_lengths_is_batched_by_length() -> None:
    async def main() -> None:
        handler = Echo()
        batcher = AdaptiveBatcher(handler, max_batch_size=4, length=len)
        shorts = [f"s{i}" for i in range(4)]
        longs = [f"long {i} " + "x" * 100 for i in range(4)]
        mixed = [item for pair in zip(shorts, longs, strict=True) for item in pair]
        await backlog(batcher, handler, mixed)
        await batcher.close()
        assert handler.batches[1:] == [shorts, longs]  # each group in arrival order

    run(main)


def test_without_a_length_key_the_backlog_is_batched_in_arrival_order() -> None:
    async def main() -> None:
        handler = Echo()
        batcher = AdaptiveBatcher(handler, max_batch_size=4)
        mixed = [f"s{i}" if i % 2 else f"long {i} " + "x" * 100 for i in range(8)]
        await backlog(batcher, handler, mixed)
        await batcher.close()
        assert handler.batches[1:] == [mixed[:4], mixed[4:]]

    run(main)


def test_the_oldest_queued_item_is_always_in_the_next_batch() -> None:
    async def main() -> None:
        handler = Echo()
        batcher = AdaptiveBatcher(handler, max_batch_size=4, length=len)
        rng = random.Random(7)
        items = [f"{i:03d}" + "x" * rng.choice([1, 2, 40, 41, 300]) for i in range(60)]
        await backlog(batcher, handler, items)
        await batcher.close()
        waiting = list(items)  # queued, oldest first
        for batch in handler.batches[1:]:
            assert waiting[0] in batch
            waiting = [item for item in waiting if item not in batch]
        assert waiting == []

    run(main)


def test_an_odd_length_item_waits_only_until_it_is_the_oldest() -> None:
    async def main() -> None:
        handler = Echo()
        batcher = AdaptiveBatcher(handler, max_batch_size=4, length=len)
        odd = "odd " + "x" * 500
        items = ["s0", odd, *(f"s{i}" for i in range(1, 12))]
        await backlog(batcher, handler, items)
        await batcher.close()
        # Batch 1 is s0 and three shorts that fit it; then the long item is the oldest.
        assert odd not in handler.batches[1]
        assert odd in handler.batches[2]

    run(main)


def test_grouping_pads_less_than_arrival_order_and_stats_report_it() -> None:
    async def scenario(grouped: bool) -> tuple[list[list[str]], list[BatchStats]]:
        handler = Echo()
        stats: list[BatchStats] = []
        batcher = AdaptiveBatcher(
            handler, max_batch_size=8, length=len if grouped else None, on_batch=stats.append
        )
        rng = random.Random(3)
        items = [f"{i:03d}" + "x" * rng.choice([5, 10, 60, 120, 250]) for i in range(64)]
        await backlog(batcher, handler, items)
        await batcher.close()
        return handler.batches[1:], stats[1:]

    async def main() -> None:
        grouped, grouped_stats = await scenario(grouped=True)
        fifo, fifo_stats = await scenario(grouped=False)
        assert padding(grouped) < padding(fifo) / 3
        for batch, stats in zip(grouped, grouped_stats, strict=True):
            assert stats.size == len(batch)
            assert stats.padding_ratio == pytest.approx(padding([batch]))
        assert all(stats.padding_ratio is None for stats in fifo_stats)

    run(main)


def test_what_fits_in_one_batch_is_not_reordered() -> None:
    async def main() -> None:
        handler = Echo()
        handler.release.set()
        batcher = AdaptiveBatcher(handler, max_batch_size=8, length=len)
        items = ["a" * 50, "b", "c" * 20, "d"]
        assert await batcher.submit_many(items) == [f"echo {item}" for item in items]
        await batcher.close()
        assert handler.batches == [items]

    run(main)


def test_a_lone_request_with_a_length_key_is_not_held_back() -> None:
    async def main() -> None:
        handler = Echo()
        handler.release.set()
        batcher = AdaptiveBatcher(handler, max_wait_ms=10_000, length=len)
        async with asyncio.timeout(1):
            assert await batcher.submit("alone") == "echo alone"
        await batcher.close()

    run(main)


def test_a_single_item_batch_pads_nothing() -> None:
    async def main() -> None:
        handler = Echo()
        handler.release.set()
        stats: list[BatchStats] = []
        batcher = AdaptiveBatcher(handler, length=len, on_batch=stats.append)
        await batcher.submit("one item")
        await batcher.close()
        assert [s.padding_ratio for s in stats] == [0.0]

    run(main)


def test_a_length_key_that_raises_fails_that_submit_alone() -> None:
    def length(item: str) -> int:
        if item == "bad":
            raise ValueError("no length")
        return len(item)

    async def main() -> None:
        handler = Echo()
        handler.release.set()
        batcher = AdaptiveBatcher(handler, length=length)
        with pytest.raises(ValueError, match="no length"):
            await batcher.submit_many(["fine", "bad"])
        assert batcher.queue_depth == 0
        assert await batcher.submit("next") == "echo next"
        await batcher.close()
        assert handler.batches == [["next"]]

    run(main)


def test_padding_ratio_histogram_is_exported_per_model() -> None:
    metrics = ServingMetrics()
    metrics.batch_padding_ratio.labels("minilm").observe(0.4)
    text = metrics.render().decode()
    assert 'maas_batch_padding_ratio_bucket{le="0.5",model="minilm"} 1.0' in text
