"""The Runtime extension point.

A runtime turns one stored model version into a callable that takes a *batch
of items* and returns one result per item. It never sees HTTP: the data plane
hands it already-decoded Python/numpy values. Compute runs on the executor it
is given, never on the event loop.

Third parties add runtimes through the ``maas.runtimes`` entry-point group; an
entry point named ``<task>:<format>`` points at a Runtime subclass.

Two optional hooks serve the batcher: ``predict_with_threads`` takes the share of
the cores a batch may use (all of them when it computes alone), and
``length_key`` estimates an item's tokens so that items of similar length are
batched together.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from maas.registry.schemas import VersionInfo

T = TypeVar("T")

# Runtime.run_compute: calls that average under this run inline on the event loop.
INLINE_BELOW_SECONDS = 0.0002
INLINE_AFTER_CALLS = 8


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One named input or output; ``-1`` marks a dynamic dimension."""

    name: str
    datatype: str  # Open Inference Protocol V2 name: FP32, INT64, BYTES, ...
    shape: list[int]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True, slots=True)
class RuntimeContext:
    """What a runtime needs from its host, and nothing more."""

    model_dir: Path
    version: VersionInfo
    executor: Executor
    torch_threads: int = 0
    options: dict[str, Any] = field(default_factory=dict)


class Runtime(ABC):
    """Base class: ``load``, ``predict(batch)``, ``unload``, ``metadata``, ``memory_bytes``."""

    task: ClassVar[str]
    formats: ClassVar[tuple[str, ...]]

    def __init__(self, context: RuntimeContext) -> None:
        self.context = context
        self.version = context.version
        self._compute_seconds = 0.0  # exponential mean of compute calls (run_compute)
        self._compute_calls = 0

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking compute on the runtime's executor."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.context.executor, fn, *args)

    async def run_compute(self, fn: Callable[..., T], *args: Any) -> T:
        """Run one batch's compute: on the executor, or inline when it is always tiny.

        Handing a call to a compute thread and back costs ~0.1-0.3 ms of wake-ups;
        a graph like ``y = 2x + 1`` computes in ~8 us. Once ``INLINE_AFTER_CALLS``
        calls averaged under ``INLINE_BELOW_SECONDS`` (exponential mean), calls run
        on the event loop thread directly; a slow call moves the mean back up and
        the next calls go to the executor again. The loop is held at most about
        one slow call long.
        """
        if self._compute_calls >= INLINE_AFTER_CALLS and (
            self._compute_seconds < INLINE_BELOW_SECONDS
        ):
            started = time.perf_counter()
            result = fn(*args)
            self._observe(time.perf_counter() - started)
            return result

        def timed() -> tuple[T, float]:
            started = time.perf_counter()
            value = fn(*args)
            return value, time.perf_counter() - started

        result, seconds = await self.run(timed)
        self._observe(seconds)
        return result

    def _observe(self, seconds: float) -> None:
        if self._compute_calls == 0:
            self._compute_seconds = seconds
        else:
            self._compute_seconds += 0.2 * (seconds - self._compute_seconds)
        self._compute_calls += 1

    @abstractmethod
    async def load(self) -> None:
        """Read weights and warm up. Raise to fail the load with a clear cause."""

    @abstractmethod
    async def predict(self, batch: Sequence[Any]) -> Sequence[Any]:
        """One result per item; an item that fails on its own may be a BaseException."""

    async def predict_with_threads(self, batch: Sequence[Any], threads: int) -> Sequence[Any]:
        """``predict`` for a batch whose compute may use ``threads`` intra-op threads.

        The batcher passes the share of the cores this batch may use: all of them
        when it computes alone, fewer beside other batches; 0 = no budget, keep the
        runtime's own count (``RuntimeContext.torch_threads``). The default ignores
        the budget; runtimes whose thread count can change per call override this.
        """
        return await self.predict(batch)

    def length_key(self) -> Callable[[Any], int] | None:
        """An estimate of an item's length in tokens, for batching similar lengths together.

        None (the default): items have no length that padding would cost. The key
        runs on the event loop for every submitted item, so it must not tokenize.
        """
        return None

    async def unload(self) -> None:  # noqa: B027 - optional hook with a sensible default
        """Release memory. The default drops references and lets the GC do the rest."""

    @abstractmethod
    def inputs(self) -> list[TensorSpec]: ...

    @abstractmethod
    def outputs(self) -> list[TensorSpec]: ...

    @abstractmethod
    def memory_bytes(self) -> int:
        """Resident bytes attributable to this model (weights and caches)."""


def module_bytes(module: Any) -> int:
    """Bytes held by a torch module's parameters and buffers (0 when not loaded)."""
    if module is None:
        return 0
    tensors = [*module.parameters(), *module.buffers()]
    return int(sum(t.numel() * t.element_size() for t in tensors))


def sequence_limit(max_positions: int | None, tokenizer: Any, default: int) -> int:
    """Most tokens a model reads: its position table or its tokenizer's limit, the smaller
    (``default`` when neither is known).

    The one truncation rule: every encoder runtime (embeddings and classifiers, hf and
    onnx) and the jobs that score or compare versions use it, so an evaluation reads
    exactly the tokens the server reads. Tokenizers without a real limit report a huge
    sentinel (about 1e30), which is ignored.
    """
    limits = [max_positions] if max_positions else []
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
        limits.append(tok_max)
    return min(limits) if limits else default


@contextmanager
def intra_op_threads(threads: int) -> Iterator[None]:
    """Let torch use ``threads`` intra-op threads on the calling thread, then restore the count.

    torch keeps the count per OS thread (OpenMP's nthreads ICV, MKL's thread-local
    count; checked on torch 2.13: a compute thread that sets 2 leaves the others at
    1), so each compute thread can follow its own batch's budget. Restoring keeps
    code that does not set a count (explanations, other runtimes on the same thread)
    on the default. ``threads`` <= 0 changes nothing.
    """
    if threads <= 0:
        yield
        return
    import torch

    before = torch.get_num_threads()
    if before == threads:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# UTF-8 bytes per token, a middle value for WordPiece (MiniLM's tokenizer): English
# 4.8, code 2.1, German 2.8, Russian 2.2, Chinese 2.7. Bytes vary less across scripts
# than characters (Chinese: 0.9 characters per token).
BYTES_PER_TOKEN = 3


def estimated_tokens(item: Any, max_tokens: int) -> int:
    """Tokens an input will occupy, without tokenizing (about 0.1 us against 50 us-1 ms).

    Token ids count exactly; text by its UTF-8 size, plus the two special tokens an
    encoder adds; both capped at ``max_tokens`` as truncation will.
    """
    if isinstance(item, list | tuple):
        count = len(item)
    elif isinstance(item, str):
        count = 2 + (len(item.encode()) + BYTES_PER_TOKEN - 1) // BYTES_PER_TOKEN
    else:
        count = 1
    return max(1, min(count, max_tokens))
