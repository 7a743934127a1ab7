"""ComputePool: a lone call always runs on the first thread; concurrent calls spread out."""

from __future__ import annotations

import threading

import pytest

from maas.serving.compute_pool import ComputePool


def test_lone_calls_always_run_on_the_first_thread() -> None:
    pool = ComputePool(2)
    try:
        names = [pool.submit(lambda: threading.current_thread().name).result() for _ in range(20)]
    finally:
        pool.shutdown()
    assert set(names) == {names[0]} and names[0].startswith("maas-compute-0")


def test_a_call_made_while_the_first_thread_is_busy_runs_on_the_second() -> None:
    pool = ComputePool(2)
    release = threading.Event()
    started = threading.Event()

    def hold() -> str:
        started.set()
        release.wait(10)
        return threading.current_thread().name

    try:
        first = pool.submit(hold)
        assert started.wait(10)
        second = pool.submit(lambda: threading.current_thread().name).result(10)
        release.set()
        assert first.result(10).startswith("maas-compute-0")
        assert second.startswith("maas-compute-1")
        # Both free again: back to the first thread.
        assert pool.submit(lambda: threading.current_thread().name).result(10) == first.result()
    finally:
        release.set()
        pool.shutdown()


def test_errors_reach_the_caller_and_free_the_thread() -> None:
    pool = ComputePool(1)
    try:
        with pytest.raises(ZeroDivisionError):
            pool.submit(lambda: 1 / 0).result(10)
        assert pool.submit(lambda: 2).result(10) == 2
    finally:
        pool.shutdown()


def test_a_pool_needs_a_thread() -> None:
    with pytest.raises(ValueError, match="at least one thread"):
        ComputePool(0)
