"""The Runtime extension point.

A runtime turns one stored model version into a callable that takes a *batch
of items* and returns one result per item. It never sees HTTP: the data plane
hands it already-decoded Python/numpy values. Compute runs on the executor it
is given, never on the event loop.

Third parties add runtimes through the ``maas.runtimes`` entry-point group; an
entry point named ``<task>:<format>`` points at a Runtime subclass.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from maas.registry.schemas import VersionInfo

T = TypeVar("T")


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

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking compute on the runtime's executor."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.context.executor, fn, *args)

    @abstractmethod
    async def load(self) -> None:
        """Read weights and warm up. Raise to fail the load with a clear cause."""

    @abstractmethod
    async def predict(self, batch: Sequence[Any]) -> Sequence[Any]:
        """One result per item; an item that fails on its own may be a BaseException."""

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
    """Most tokens a model reads: its position table or its tokenizer's limit, the smaller.

    Tokenizers without a real limit report a huge sentinel (about 1e30), which is ignored.
    """
    limits = [max_positions] if max_positions else []
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
        limits.append(tok_max)
    return min(limits) if limits else default
