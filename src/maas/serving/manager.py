"""ModelManager: loads versions on demand under a memory budget, LRU eviction.

* One load per model however many requests arrive first (single flight): the
  load runs as its own task and every waiter awaits it through ``shield`` so a
  cancelled request does not cancel the shared load.
* A failed load raises ``UnavailableError`` with the cause and is forgotten, so
  the next request retries.
* Memory: each load reserves an estimate (the artifact size) before it starts
  and is re-accounted with the runtime's own figure afterwards; the least
  recently used model that is idle and not pinned is unloaded to make room.
* Pins recorded in the registry (``desired_pins``, kept by
  ``serving.reconcile``) hold for loads on demand too; the last failure to load
  each version is kept (``load_failures``) for ``GET /admin/v1/loaded``.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread

from maas.config import Settings
from maas.errors import MaasError, UnavailableError
from maas.registry.schemas import VersionInfo
from maas.registry.store import Registry
from maas.runtimes.base import Runtime, RuntimeContext
from maas.runtimes.registry import runtime_class
from maas.runtimes.text_to_image import DiffusersTextToImageRuntime
from maas.serving.batching import AdaptiveBatcher, BatchStats
from maas.serving.compute_pool import ComputePool
from maas.serving.generation import EngineLimits, GenerationEngine, create_engine
from maas.serving.metrics import ServingMetrics

log = logging.getLogger("maas.serving")


@dataclass(eq=False)
class LoadedModel:
    key: str
    version: VersionInfo
    runtime: Runtime
    batcher: AdaptiveBatcher[Any, Any]
    memory: int
    engine: GenerationEngine | None = None
    pinned: bool = False
    active: int = 0
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)


class ModelManager:
    def __init__(
        self,
        registry: Registry,
        settings: Settings,
        metrics: ServingMetrics,
        executor: Executor | None = None,
    ) -> None:
        self._registry = registry
        self._settings = settings
        self._metrics = metrics
        # Lowest free thread first: a lone batch keeps its warm OpenMP team (compute_pool.py).
        self._own_executor = executor is None
        self._executor = executor or ComputePool(settings.compute_threads)
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, asyncio.Future[LoadedModel]] = {}
        self._reserved: dict[str, int] = {}
        self._lock = asyncio.Lock()
        # Refs the registry says to pin (deployments): a load on demand pins them too.
        self.desired_pins: frozenset[str] = frozenset()
        # ref -> why its last load failed (cleared by a successful load).
        self.load_failures: dict[str, str] = {}

    @property
    def budget(self) -> int:
        return self._settings.memory_budget_bytes

    def loaded(self) -> list[LoadedModel]:
        return list(self._models.values())

    def get_loaded(self, key: str) -> LoadedModel | None:
        return self._models.get(key)

    def used_bytes(self) -> int:
        return sum(m.memory for m in self._models.values()) + sum(self._reserved.values())

    @asynccontextmanager
    async def use(self, version: VersionInfo) -> AsyncIterator[LoadedModel]:
        """Borrow a loaded model for one request; it cannot be evicted meanwhile."""
        model = await self.get(version)
        model.active += 1
        model.last_used = time.monotonic()
        self._models.move_to_end(model.key)
        try:
            yield model
        finally:
            model.active -= 1

    async def get(self, version: VersionInfo, *, pinned: bool = False) -> LoadedModel:
        key = version.ref
        model = self._models.get(key)
        if model is not None and model.version.digest == version.digest:
            model.pinned = model.pinned or pinned
            return model
        future = self._loading.get(key)
        if future is None:
            future = asyncio.ensure_future(self._load(version, pinned))
            self._loading[key] = future
            future.add_done_callback(functools.partial(self._load_done, key))
        return await asyncio.shield(future)

    def _load_done(self, key: str, future: asyncio.Future[LoadedModel]) -> None:
        self._loading.pop(key, None)
        if not future.cancelled():
            future.exception()  # mark retrieved: waiters may all have gone away

    async def _load(self, version: VersionInfo, pinned: bool) -> LoadedModel:
        key = version.ref
        started = time.perf_counter()
        estimate = version.size_bytes
        async with self._lock:
            await self._make_room(estimate, key)
            self._reserved[key] = estimate
        try:
            path = await anyio.to_thread.run_sync(self._registry.materialize, key)
            cls = runtime_class(version.task, version.format)
            runtime = cls(
                RuntimeContext(
                    model_dir=path,
                    version=version,
                    executor=self._executor,
                    torch_threads=self._settings.effective_torch_threads,
                    options=self._runtime_options(version),
                )
            )
            await runtime.load()
            if isinstance(runtime, DiffusersTextToImageRuntime):
                runtime.on_step = functools.partial(self._record_step, version.model)
        except Exception as exc:
            self._reserved.pop(key, None)
            self._metrics.loads.labels(version.model, "failure").inc()
            log.warning("loading %s failed: %s", key, exc)
            if isinstance(exc, MaasError) and not isinstance(exc, UnavailableError):
                detail = exc.message
            else:
                detail = f"{type(exc).__name__}: {exc}"
            self.load_failures[key] = detail
            raise UnavailableError(f"model {key} failed to load: {detail}") from exc
        memory = runtime.memory_bytes() or estimate
        async with self._lock:
            self._reserved.pop(key, None)
            try:
                await self._make_room(memory, key)
            except UnavailableError:
                await runtime.unload()
                raise
            model = LoadedModel(
                key=key,
                version=version,
                runtime=runtime,
                batcher=AdaptiveBatcher(
                    lambda items, batch: runtime.predict_with_threads(items, batch.threads),
                    max_batch_size=self._settings.max_batch_size,
                    max_wait_ms=self._settings.max_wait_ms,
                    # One batch per compute thread: while one computes, the next forms.
                    max_concurrent_batches=self._settings.compute_threads,
                    # The batches in flight split the cores, so a lone batch uses them
                    # all; an explicit MAAS_TORCH_THREADS fixes every forward's instead.
                    cores=0
                    if self._settings.torch_threads
                    else self._settings.effective_torch_threads * self._settings.compute_threads,
                    length=runtime.length_key(),
                    on_batch=functools.partial(self._record, version.model),
                    name=key,
                ),
                memory=memory,
                pinned=pinned or key in self.desired_pins,
            )
            if version.task == "text-generation":
                model.engine = create_engine(
                    runtime,
                    metrics=self._metrics,
                    model_label=version.model,
                    executor=self._executor,
                    limits=EngineLimits(
                        max_running=self._settings.max_running_sequences,
                        max_queued=self._settings.max_queued_requests,
                        kv_cache_tokens=self._settings.kv_cache_tokens,
                    ),
                )
            self._models[key] = model
            self.load_failures.pop(key, None)
        elapsed = time.perf_counter() - started
        self._metrics.loads.labels(version.model, "success").inc()
        self._metrics.load_seconds.labels(version.model).observe(elapsed)
        self._metrics.loaded.set(len(self._models))
        self._metrics.model_memory.labels(key).set(memory)
        log.info("loaded %s in %.2fs (%d bytes)", key, elapsed, memory)
        # A model brings hundreds of thousands of long-lived objects (MiniLM: ~380k);
        # a full collection walking them stalled the event loop 100-500 ms. Frozen,
        # they are never scanned again; what the model frees on unload is reclaimed
        # by reference counting as usual.
        gc.freeze()
        return model

    def _runtime_options(self, version: VersionInfo) -> dict[str, Any]:
        """What a generation runtime sizes its KV cache by (llama.cpp allocates it at load)."""
        if version.task != "text-generation":
            return {}
        return {
            "kv_cache_tokens": self._settings.kv_cache_tokens,
            "max_sequences": self._settings.max_running_sequences,
            # llama.cpp's threads per decode step; 0 = the runtime's default.
            "threads": self._settings.torch_threads,
            "flash_attention": self._settings.flash_attention,
        }

    def _record_step(self, model: str, done: int, steps: int) -> None:
        """A denoising step of an image model ended (called on its compute thread)."""
        self._metrics.denoising_steps.labels(model).inc()
        self._metrics.denoising_progress.labels(model).set(done / steps if steps else 1.0)

    def _record(self, model: str, stats: BatchStats) -> None:
        self._metrics.batch_size.labels(model).observe(stats.size)
        self._metrics.queue_seconds.labels(model).observe(stats.queue_wait_seconds)
        self._metrics.compute_seconds.labels(model).observe(stats.compute_seconds)
        if stats.padding_ratio is not None:
            self._metrics.batch_padding_ratio.labels(model).observe(stats.padding_ratio)

    async def _make_room(self, needed: int, key: str) -> None:
        """Evict idle, unpinned models, least recently used first. Caller holds the lock."""
        if needed > self.budget:
            raise UnavailableError(
                f"model {key} needs {needed} bytes, more than the whole memory budget "
                f"({self.budget} bytes, MAAS_MEMORY_BUDGET_BYTES)"
            )
        while self.used_bytes() + needed > self.budget:
            victim = next(
                (m for m in self._models.values() if m.active == 0 and not m.pinned), None
            )
            if victim is None:
                raise UnavailableError(
                    f"no memory to load {key}: {self.used_bytes()} of {self.budget} bytes are "
                    "held by pinned or busy models; retry later or raise MAAS_MEMORY_BUDGET_BYTES"
                )
            await self._unload(victim, reason="evicted")

    async def unload(self, key: str, *, drain_seconds: float = 30.0) -> bool:
        """Unload now: requests that borrowed the model finish first (up to
        ``drain_seconds``; generation streams included), new ones load it again."""
        async with self._lock:
            model = self._models.pop(key, None)
        if model is None:
            return False
        # Out of the table, so no new request borrows it; wait for the borrowers
        # outside the lock, so that other models load meanwhile.
        deadline = time.monotonic() + drain_seconds
        # Polled: borrowers release with a bare decrement (``use``), on the hot path.
        while model.active > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        await self._unload(model, reason="request")
        return True

    async def _unload(self, model: LoadedModel, *, reason: str) -> None:
        self._models.pop(model.key, None)
        await model.batcher.close()
        if model.engine is not None:
            await model.engine.close()
        await model.runtime.unload()
        self._metrics.unloads.labels(model.version.model, reason).inc()
        self._metrics.loaded.set(len(self._models))
        self._metrics.model_memory.remove(model.key)
        log.info("unloaded %s (%s)", model.key, reason)

    async def close(self) -> None:
        for model in list(self._models.values()):
            await self._unload(model, reason="shutdown")
        if self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)
