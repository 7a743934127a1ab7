"""ModelReplica: one Ray Serve replica of one model version (``maas serve --ray``).

Ray Serve runs this class as an actor, once per replica; ``serving.ray_host``
deploys it, one application per version, and calls it through deployment
handles. A replica is a small engine: a ``LocalHost`` whose ``ModelManager``
holds the one version, pinned, loaded in the constructor so that Ray marks the
replica ready only once its weights are in memory (the weights load here, in
the replica's process, not in the maas server). Batching and continuous
batching run per replica, exactly as in the embedded engine.

Requests and answers are the engine wire format (``engine.wire``: msgpack,
an allow-list of dataclasses, never pickle), not Ray's pickled objects, and
every answer is ``["ok", value]`` or ``["error", MaasError]``: a 404 or 429
raised in a replica reaches the data plane as the same typed error, with its
status, instead of a ``RayTaskError`` wrapping a traceback.

This module never imports ray: Ray imports it in the replica's process.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncGenerator
from typing import Any

import anyio.to_thread

from maas.config import Settings
from maas.errors import MaasError
from maas.registry.schemas import VersionInfo
from maas.registry.store import Registry
from maas.serving.batching import RequestCost
from maas.serving.engine import wire
from maas.serving.hosts import LocalHost
from maas.serving.manager import ModelManager
from maas.serving.metrics import ServingMetrics

log = logging.getLogger("maas.ray")


def replica_settings(settings: Settings, num_cpus: float) -> Settings:
    """The server's settings as one replica uses them.

    A replica never deploys to Ray itself, and its compute threads follow the
    CPUs Ray reserved for it rather than the cores of the whole machine (two
    replicas of one CPU each on two cores must not each run two-thread forwards).
    """
    threads = settings.torch_threads or max(1, math.floor(num_cpus))
    return settings.model_copy(
        update={"ray_address": None, "engine_address": None, "torch_threads": threads}
    )


class ModelReplica:
    """The methods ``RayHost`` calls; each takes and returns wire-encoded bytes."""

    async def __init__(self, settings: Settings, version: VersionInfo) -> None:  # type: ignore[misc]
        # Ray Serve awaits an async constructor before the replica takes traffic.
        self._version = version
        self._registry = await anyio.to_thread.run_sync(Registry, settings)
        self._host = LocalHost(ModelManager(self._registry, settings, ServingMetrics()))
        try:
            await self._host.load(version, pinned=True)
        except BaseException:
            await self._host.close()
            self._registry.close()
            raise
        log.info("replica of %s ready", version.ref)

    async def predict(self, payload: bytes) -> bytes:
        items = wire.unpackb(payload)

        async def run() -> Any:
            cost = RequestCost()
            results = await self._host.predict(self._version, items, cost)
            return [results, cost.queue_seconds, cost.compute_seconds]

        return await _answer(run())

    async def predict_tensors(self, payload: bytes) -> bytes:
        inputs = wire.unpackb(payload)

        async def run() -> Any:
            cost = RequestCost()
            outputs = await self._host.predict_tensors(self._version, inputs, cost)
            return [outputs, cost.queue_seconds, cost.compute_seconds]

        return await _answer(run())

    async def labels(self) -> bytes:
        return await _answer(self._host.labels(self._version))

    async def signature(self) -> bytes:
        return await _answer(self._host.signature(self._version))

    async def explain(self, payload: bytes) -> bytes:
        text, target, steps = wire.unpackb(payload)
        return await _answer(self._host.explain(self._version, text, target=target, steps=steps))

    async def status(self) -> bytes:
        """This replica's view of its model (memory, requests in flight, queue)."""

        async def run() -> Any:
            status = await self._host.status()
            return status.models[0] if status.models else None

        return await _answer(run())

    async def generate(self, payload: bytes) -> AsyncGenerator[bytes, None]:
        """``["event", Prepared]``, ``["event", Chunk]``..., or ``["error", MaasError]`` last.

        Cancelling the Ray request (the caller closed its stream) cancels this
        generator at its current ``await``; closing ``events`` then frees the
        sequences' slots in the running batch.
        """
        request = wire.unpackb(payload)
        events = self._host.generate(self._version, request)
        try:
            async for event in events:
                yield wire.packb(["event", event])
        except MaasError as exc:
            yield wire.packb(["error", exc])
        except Exception as exc:
            log.exception("replica of %s: generation failed", self._version.ref)
            yield wire.packb(["error", MaasError(f"replica error: {type(exc).__name__}: {exc}")])
        finally:
            await events.aclose()


async def _answer(call: Any) -> bytes:
    try:
        return wire.packb(["ok", await call])
    except MaasError as exc:
        return wire.packb(["error", exc])
    except Exception as exc:
        log.exception("replica call failed")
        return wire.packb(["error", MaasError(f"replica error: {type(exc).__name__}: {exc}")])
