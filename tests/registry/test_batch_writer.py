"""The batch writer the usage and prediction recorders share: when it writes, and what it keeps."""

from __future__ import annotations

import asyncio
import threading

from maas.registry.batch_writer import BatchWriter


def test_records_are_written_in_one_batch_off_the_event_loop_after_flush_seconds() -> None:
    written: list[tuple[list[int], bool]] = []
    loop_thread = threading.get_ident()

    def write(batch: list[int]) -> None:
        written.append((batch, threading.get_ident() == loop_thread))

    async def main() -> None:
        writer = BatchWriter(write, name="test", flush_seconds=0.05)
        writer.add(1)
        writer.add(2, 3)
        assert writer.pending == [1, 2, 3] and written == []  # add never writes
        await asyncio.sleep(0.2)
        assert writer.pending == []
        await writer.close()

    asyncio.run(main())
    assert written == [([1, 2, 3], False)]


def test_flush_rows_pending_records_are_written_at_once() -> None:
    written: list[list[int]] = []

    async def main() -> None:
        writer = BatchWriter(written.append, name="test", flush_seconds=60, flush_rows=4)
        writer.add(0)
        for i in range(1, 4):
            writer.add(i)
        for _ in range(50):
            await asyncio.sleep(0.01)
            if written:
                break
        await writer.close()

    asyncio.run(main())
    assert written == [[0, 1, 2, 3]]


def test_a_failed_write_keeps_its_records_in_order_for_the_next_and_close_writes_the_rest() -> None:
    attempts: list[list[str]] = []
    written: list[str] = []

    def write(batch: list[str]) -> None:
        attempts.append(list(batch))
        if len(attempts) == 1:
            raise RuntimeError("the database is down")
        written.extend(batch)

    async def main() -> None:
        writer = BatchWriter(write, name="test", flush_seconds=60)
        writer.add("a", "b")
        assert await writer.flush() == 0  # failed: kept
        writer.add("c")
        assert writer.pending == ["a", "b", "c"]
        await writer.close()

    asyncio.run(main())
    assert attempts == [["a", "b"], ["a", "b", "c"]]
    assert written == ["a", "b", "c"]
