"""Runtime helpers for the batcher: per-thread torch thread counts, token estimates."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from maas.runtimes.base import estimated_tokens, intra_op_threads


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
