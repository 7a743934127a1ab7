"""Runtime helpers for the batcher: per-thread torch thread counts, token estimates."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from maas.config import Settings
from maas.registry.store import Registry
from maas.runtimes.base import (
    INLINE_AFTER_CALLS,
    RuntimeContext,
    estimated_tokens,
    intra_op_threads,
)
from maas.runtimes.onnx import OnnxTensorRuntime
from tests.helpers import make_onnx_file


@pytest.fixture
def torch_threads() -> Iterator[int]:
    """The test thread's torch thread count, put back afterwards (torch also keeps a
    process-wide default for threads that have not used torch yet)."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


def test_intra_op_threads_applies_to_the_calling_thread_only(torch_threads: int) -> None:
    import torch

    torch.set_num_threads(1)
    inside = threading.Event()
    leave = threading.Event()
    seen: dict[str, int] = {}

    def compute() -> None:
        torch.set_num_threads(1)
        with intra_op_threads(3):
            seen["inside"] = torch.get_num_threads()
            inside.set()
            leave.wait(5)
        seen["after"] = torch.get_num_threads()

    worker = threading.Thread(target=compute)
    worker.start()
    try:
        assert inside.wait(5)
        # While the worker runs with 3 threads, this thread still has its own 1.
        assert torch.get_num_threads() == 1
    finally:
        leave.set()
        worker.join()
    assert seen == {"inside": 3, "after": 1}


def test_intra_op_threads_restores_the_count_after_a_failure(torch_threads: int) -> None:
    import torch

    torch.set_num_threads(1)
    with pytest.raises(RuntimeError), intra_op_threads(2):
        assert torch.get_num_threads() == 2
        raise RuntimeError("forward failed")
    assert torch.get_num_threads() == 1


def test_intra_op_threads_of_zero_keeps_the_current_count(torch_threads: int) -> None:
    import torch

    torch.set_num_threads(1)
    with intra_op_threads(0):
        assert torch.get_num_threads() == 1


def test_token_ids_count_exactly_and_text_by_its_utf8_size() -> None:
    assert estimated_tokens([101, 7592, 102], max_tokens=512) == 3
    assert estimated_tokens("", max_tokens=512) == 2  # the encoder's two special tokens
    assert estimated_tokens("abcdef", max_tokens=512) == 2 + 2
    # Three UTF-8 bytes per Chinese character: about one token each, as WordPiece splits them.
    assert estimated_tokens("北京是中国的首都", max_tokens=512) == 2 + 8


def test_estimates_are_capped_where_truncation_cuts() -> None:
    assert estimated_tokens("word " * 1000, max_tokens=128) == 128
    assert estimated_tokens(list(range(600)), max_tokens=512) == 512


def test_longer_text_never_estimates_fewer_tokens() -> None:
    lengths = [estimated_tokens("x" * n, max_tokens=512) for n in range(0, 2000, 7)]
    assert lengths == sorted(lengths)


def _onnx_runtime(tmp_path: Path) -> OnnxTensorRuntime:
    registry = Registry(Settings(home=tmp_path / "home"))
    try:
        onnx = make_onnx_file(tmp_path / "m" / "model.onnx")
        info = registry.push(onnx.parent, "affine", task="tensor")
        path = registry.materialize(info.ref)
    finally:
        registry.close()
    executor = ThreadPoolExecutor(1, thread_name_prefix="compute")
    return OnnxTensorRuntime(RuntimeContext(path, info, executor, torch_threads=1))


class _Clock:
    """A perf_counter that only the computations move: no timing in the test."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_tiny_compute_moves_onto_the_loop_and_slow_compute_back_to_the_executor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = _onnx_runtime(tmp_path)
    clock = _Clock()
    monkeypatch.setattr("maas.runtimes.base.time", clock)
    threads: list[str] = []

    def compute(seconds: float) -> int:
        threads.append(threading.current_thread().name)
        clock.now += seconds  # what the call "took"
        return 1

    async def main() -> None:
        for _ in range(INLINE_AFTER_CALLS + 2):
            assert await runtime.run_compute(compute, 1e-6) == 1
        assert await runtime.run_compute(compute, 0.05) == 1  # slow: the mean jumps up
        await runtime.run_compute(compute, 1e-6)

    asyncio.run(main())
    loop_thread = threading.main_thread().name
    first = threads[:INLINE_AFTER_CALLS]
    assert all(name.startswith("compute") for name in first)  # until the mean is known
    assert threads[INLINE_AFTER_CALLS] == loop_thread  # tiny: inline on the loop
    assert threads[-2] == loop_thread  # the slow call was not foreseen ...
    assert threads[-1].startswith("compute")  # ... but the next one goes back to a thread


def test_a_tiny_onnx_graph_answers_the_same_inline(tmp_path: Path) -> None:
    runtime = _onnx_runtime(tmp_path)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)

    async def main() -> list[np.ndarray]:
        await runtime.load()
        answers = []
        for _ in range(INLINE_AFTER_CALLS + 4):
            (out,) = await runtime.predict([{"x": x}])
            answers.append(out["y"])
        return answers

    answers = asyncio.run(main())
    expected = x @ np.arange(12, dtype=np.float32).reshape(4, 3) + 1
    for y in answers:
        np.testing.assert_allclose(y, expected)
