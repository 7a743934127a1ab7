"""RemoteHost: the ``ModelHost`` of an HTTP worker whose models live in the engine process.

One ZeroMQ DEALER socket per worker, connected to the engine's ``ipc://`` path;
calls are multiplexed on it by call id and answered out of order. A reader task
resolves each call's future.

When the engine process dies, ZeroMQ reports the disconnect on a monitor
socket: every call in flight fails at once with 503 ("the model engine
stopped"), never hangs. The socket reconnects by itself when the supervisor has
restarted the engine; calls made meanwhile wait in ZeroMQ's queue and are
answered by the new engine (which loads models again on demand).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncGenerator
from typing import Any

import numpy as np
import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

from maas.errors import MaasError, UnavailableError
from maas.registry.schemas import VersionInfo
from maas.runtimes.base import TensorSpec
from maas.runtimes.explain import Explanation
from maas.security.limits import WindowState
from maas.serving.batching import RequestCost
from maas.serving.engine import wire
from maas.serving.generation import GenerationEvent, GenerationRequest, Prepared
from maas.serving.hosts import HostStatus, LoadedView, ModelHost

log = logging.getLogger("maas.engine")

ENGINE_GONE = (
    "the model engine process stopped while serving this request; it is being restarted, "
    "retry the request"
)


class RemoteHost(ModelHost):
    def __init__(self, address: str) -> None:
        self.address = address
        self._context = zmq.asyncio.Context()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._monitor = self._socket.get_monitor_socket(
            zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED
        )
        self._socket.connect(address)
        self._ids = itertools.count()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._streams: dict[int, asyncio.Queue[tuple[str, Any]]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def _ensure_started(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.ensure_future(self._read()),
                asyncio.ensure_future(self._watch()),
            ]

    async def _read(self) -> None:
        while True:
            (payload,) = await self._socket.recv_multipart(copy=True)
            try:
                call_id, kind, value = wire.unpackb(payload)
            except Exception:
                log.exception("engine sent an unreadable answer")
                continue
            stream = self._streams.get(call_id)
            if stream is not None:
                stream.put_nowait((kind, value))
                continue
            future = self._pending.pop(call_id, None)
            if future is None or future.done():
                continue  # the caller went away
            if kind == "ok":
                future.set_result(value)
            else:
                future.set_exception(value if isinstance(value, MaasError) else MaasError(value))

    async def _watch(self) -> None:
        while True:
            event = await recv_monitor_message(self._monitor)
            if event["event"] == zmq.EVENT_DISCONNECTED:
                log.warning("the model engine disconnected; failing %d calls", len(self._pending))
                pending, self._pending = self._pending, {}
                for future in pending.values():
                    if not future.done():
                        future.set_exception(UnavailableError(ENGINE_GONE))
                for stream in self._streams.values():
                    stream.put_nowait(("error", UnavailableError(ENGINE_GONE)))

    async def _call(self, op: str, *args: Any) -> Any:
        self._ensure_started()
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        try:
            await self._socket.send(wire.packb([call_id, op, list(args)]), copy=False)
            return await future
        finally:
            self._pending.pop(call_id, None)

    # ------------------------------------------------------------- ModelHost

    async def predict(self, version: VersionInfo, items: list[Any], cost: RequestCost) -> list[Any]:
        results, queued, computed = await self._call("predict", version, items)
        _add_cost(cost, queued, computed)
        return list(results)

    async def predict_tensors(
        self, version: VersionInfo, inputs: dict[str, np.ndarray], cost: RequestCost
    ) -> dict[str, np.ndarray]:
        outputs, queued, computed = await self._call("predict_tensors", version, inputs)
        _add_cost(cost, queued, computed)
        return dict(outputs)

    async def labels(self, version: VersionInfo) -> list[str]:
        return list(await self._call("labels", version))

    async def signature(self, version: VersionInfo) -> tuple[list[TensorSpec], list[TensorSpec]]:
        inputs, outputs = await self._call("signature", version)
        return list(inputs), list(outputs)

    async def explain(
        self, version: VersionInfo, text: str, *, target: str | int | None, steps: int
    ) -> Explanation:
        explanation: Explanation = await self._call("explain", version, text, target, steps)
        return explanation

    async def generate(
        self, version: VersionInfo, request: GenerationRequest
    ) -> AsyncGenerator[GenerationEvent, None]:
        self._ensure_started()
        call_id = next(self._ids)
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._streams[call_id] = events
        finished = False
        try:
            await self._send([call_id, "generate", [version, request]])
            while True:
                kind, value = await events.get()
                if kind == "end":
                    finished = True
                    return
                if kind == "error":
                    finished = True
                    raise value if isinstance(value, MaasError) else MaasError(str(value))
                yield value
                if isinstance(value, Prepared):
                    # The caller asked for more after Prepared: let the engine generate.
                    await self._send([next(self._ids), "resume", [call_id]])
        finally:
            self._streams.pop(call_id, None)
            if not finished:
                # Closed early (the HTTP client went away): free the sequences' slots.
                with contextlib.suppress(Exception):
                    await self._send([next(self._ids), "cancel", [call_id]])

    async def _send(self, message: list[Any]) -> None:
        await self._socket.send(wire.packb(message), copy=False)

    async def load(self, version: VersionInfo, *, pinned: bool = False) -> LoadedView:
        loaded: LoadedView = await self._call("load", version, pinned)
        return loaded

    async def unload(self, ref: str) -> bool:
        return bool(await self._call("unload", ref))

    async def status(self) -> HostStatus:
        status: HostStatus = await self._call("status")
        return status

    async def is_loaded(self, ref: str) -> bool:
        return bool(await self._call("is_loaded", ref))

    async def metrics(self) -> bytes:
        """The engine's own Prometheus families (batches, loaded models, generation)."""
        return bytes(await self._call("metrics"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for future in self._pending.values():
            if not future.done():
                future.set_exception(UnavailableError("the server is shutting down"))
        self._socket.disable_monitor()
        self._monitor.close()
        self._socket.close()
        self._context.term()


def _add_cost(cost: RequestCost, queued: float, computed: float) -> None:
    cost.queue_seconds = max(cost.queue_seconds, queued)
    cost.compute_seconds += computed


class RemoteLimiter:
    """Rate limits counted in the engine process, shared by every worker (no Redis needed)."""

    def __init__(self, host: RemoteHost) -> None:
        self._host = host

    async def acquire_request(self, key_id: int, limit: int) -> WindowState:
        state: WindowState = await self._host._call("acquire_request", key_id, limit)
        return state

    async def check_tokens(self, key_id: int, limit: int, needed: int) -> WindowState:
        state: WindowState = await self._host._call("check_tokens", key_id, limit, needed)
        return state

    async def record_tokens(self, key_id: int, limit: int, used: int) -> WindowState:
        state: WindowState = await self._host._call("record_tokens", key_id, limit, used)
        return state

    async def close(self) -> None:
        """Nothing to release: the windows live in the engine."""
