"""A real llama.cpp generation engine over a tiny GGUF, for the serving tests.

Shared by tests/serving/test_generation_llama.py and test_llama_sampling.py:
the runtime loads the file with llama.cpp and the engine's decode loop runs on
its own thread, exactly as in a server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from maas.config import Settings
from maas.registry.schemas import VersionInfo
from maas.registry.store import Registry
from maas.runtimes.base import RuntimeContext
from maas.runtimes.llama_cpp import LlamaCppTextGenerationRuntime
from maas.serving.generation import EngineLimits, create_engine
from maas.serving.generation_llama import LlamaGenerationEngine
from maas.serving.metrics import ServingMetrics


def pushed(home: Path, gguf: Path, name: str = "tiny") -> Iterator[VersionInfo]:
    """Push ``gguf`` as a version into a registry at ``home`` (a fixture's body)."""
    registry = Registry(Settings(home=home))
    try:
        yield registry.push(gguf, name)
    finally:
        registry.close()


@asynccontextmanager
async def llama_engine(
    path: Path,
    version: VersionInfo,
    *,
    sequences: int = 8,
    queued: int = 8,
    kv: int = 2048,
    parked: int | None = None,
) -> AsyncIterator[LlamaGenerationEngine]:
    """The engine of one loaded GGUF, closed and unloaded on exit."""
    # Flash attention off: tests compare greedy tokens with llama.cpp's own exactly.
    options: dict[str, Any] = {
        "kv_cache_tokens": kv,
        "max_sequences": sequences,
        "flash_attention": False,
    }
    if parked is not None:
        options["prefix_cache_sequences"] = parked
    executor = ThreadPoolExecutor(1)
    runtime = LlamaCppTextGenerationRuntime(
        RuntimeContext(model_dir=path, version=version, executor=executor, options=options)
    )
    await runtime.load()
    engine = create_engine(
        runtime,
        metrics=ServingMetrics(),
        model_label="tiny",
        executor=executor,
        limits=EngineLimits(max_running=sequences, max_queued=queued, kv_cache_tokens=kv),
    )
    assert isinstance(engine, LlamaGenerationEngine)
    try:
        yield engine
    finally:
        await engine.close()
        await runtime.unload()
        executor.shutdown()
