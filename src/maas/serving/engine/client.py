"""RemoteHost: the ``ModelHost`` of an HTTP worker whose models live in the engine process.

One connection per worker to the engine's Unix socket (``channel.Connection``);
calls are multiplexed on it by call id and answered out of order, each answer
resolving its call's future.

When the engine process dies the connection is lost: every call in flight
fails at once with 503 ("the model engine stopped"), never hangs. The worker
then reconnects until the supervisor's restarted engine accepts; calls made
meanwhile wait, in order, and are answered by the new engine (which loads
models again on demand) — or by the request timeout, if it never comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Any

import numpy as np

from maas.errors import MaasError, UnavailableError
from maas.registry.schemas import VersionInfo
from maas.runtimes.base import TensorSpec
from maas.runtimes.explain import Explanation
from maas.security.limits import WindowState
from maas.serving.batching import RequestCost
from maas.serving.engine import wire
from maas.serving.engine.channel import Connection
from maas.serving.generation import GenerationEvent, GenerationRequest, Prepared
from maas.serving.hosts import HostStatus, LoadedView, ModelHost

log = logging.getLogger("maas.engine")

ENGINE_GONE = (
    "the model engine process stopped while serving this request; it is being restarted, "
    "retry the request"
)


# Reconnection backoff while the engine (re)starts, seconds.
_RETRY_FIRST, _RETRY_MAX = 0.01, 0.5


class RemoteHost(ModelHost):
    def __init__(self, path: str) -> None:
        self.path = path
        self._ids = itertools.count()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._streams: dict[int, asyncio.Queue[tuple[str, Any]]] = {}
        self._connection: Connection | None = None
        self._waiting: list[bytes] = []  # sent while not connected, in order
        self._connector: asyncio.Task[None] | None = None
        self._closing = False

    def notify(self, op: str, *args: Any) -> None:
        """Send a call whose answer nobody waits for (call id -1: the engine sends none)."""
        with contextlib.suppress(UnavailableError):  # shutting down: nothing left to count
            self._send([-1, op, list(args)])

    def _send(self, message: list[Any]) -> None:
        payload = wire.packb(message)
        connection = self._connection
        if connection is not None and not connection.closed:
            try:
                connection.send(payload)
            except ConnectionError as exc:
                raise UnavailableError(ENGINE_GONE) from exc
            return
        if self._closing:
            raise UnavailableError("the server is shutting down")
        self._waiting.append(payload)
        if self._connector is None or self._connector.done():
            self._connector = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        delay = _RETRY_FIRST
        while not self._closing:
            try:
                _, connection = await loop.create_unix_connection(
                    lambda: Connection(self._on_answer, self._on_lost), self.path
                )
            except OSError:
                await asyncio.sleep(delay)  # the engine is (re)starting
                delay = min(delay * 2, _RETRY_MAX)
                continue
            self._connection = connection
            waiting, self._waiting = self._waiting, []
            for payload in waiting:
                connection.send(payload)
            return

    def _on_answer(self, connection: Connection, payload: bytes) -> None:
        try:
            call_id, kind, value = wire.unpackb(payload)
        except Exception:
            log.exception("engine sent an unreadable answer")
            return
        stream = self._streams.get(call_id)
        if stream is not None:
            stream.put_nowait((kind, value))
            return
        future = self._pending.pop(call_id, None)
        if future is None or future.done():
            return  # the caller went away
        if kind == "ok":
            future.set_result(value)
        else:
            future.set_exception(value if isinstance(value, MaasError) else MaasError(value))

    def _on_lost(self, connection: Connection) -> None:
        if connection is not self._connection:
            return
        self._connection = None
        if self._closing:
            return
        log.warning("the model engine disconnected; failing %d calls", len(self._pending))
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(UnavailableError(ENGINE_GONE))
        for stream in self._streams.values():
            stream.put_nowait(("error", UnavailableError(ENGINE_GONE)))
        # Reconnect now, so that the first call after the restart finds the engine.
        if self._connector is None or self._connector.done():
            self._connector = asyncio.ensure_future(self._connect())

    async def _call(self, op: str, *args: Any) -> Any:
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        try:
            self._send([call_id, op, list(args)])
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

    async def cancel(self, version: VersionInfo, request: str) -> None:
        await self._call("cancel_items", version, request)

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
        call_id = next(self._ids)
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._streams[call_id] = events
        finished = False
        try:
            self._send([call_id, "generate", [version, request]])
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
                    self._send([next(self._ids), "resume", [call_id]])
        finally:
            self._streams.pop(call_id, None)
            if not finished:
                # Closed early (the HTTP client went away): free the sequences' slots.
                with contextlib.suppress(ConnectionError, UnavailableError):
                    self._send([next(self._ids), "cancel", [call_id]])

    async def load(self, version: VersionInfo, *, pinned: bool = False) -> LoadedView:
        loaded: LoadedView = await self._call("load", version, pinned)
        return loaded

    async def unload(self, ref: str) -> bool:
        return bool(await self._call("unload", ref))

    async def warm(self, version: VersionInfo) -> None:
        await self._call("warm", version)

    async def status(self) -> HostStatus:
        status: HostStatus = await self._call("status")
        return status

    async def is_loaded(self, ref: str) -> bool:
        return bool(await self._call("is_loaded", ref))

    async def metrics(self) -> bytes:
        """The engine's own Prometheus families (batches, loaded models, generation)."""
        return bytes(await self._call("metrics"))

    async def close(self) -> None:
        self._closing = True
        for future in self._pending.values():
            if not future.done():
                future.set_exception(UnavailableError("the server is shutting down"))
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
        if self._connection is not None:
            self._connection.close()


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

    async def acquire_units(self, key_id: int, kind: str, limit: int, units: int) -> WindowState:
        state: WindowState = await self._host._call("acquire_units", key_id, kind, limit, units)
        return state

    async def close(self) -> None:
        """Nothing to release: the windows live in the engine."""


class RemoteQuotas:
    """Monthly quota counters kept in the engine process, shared by every worker.

    Only keys that have a quota are counted there: ``check`` remembers them, and
    ``count`` of any other key sends nothing.
    """

    def __init__(self, host: RemoteHost) -> None:
        self._host = host
        self._limited: set[int] = set()

    async def check(
        self,
        key_id: int,
        *,
        request_quota: int | None,
        token_quota: int | None,
        tokens_needed: int = 0,
    ) -> None:
        if request_quota is None and token_quota is None:
            return
        self._limited.add(key_id)
        await self._host._call("quota_check", key_id, request_quota, token_quota, tokens_needed)

    def count(self, key_id: int, tokens: int, when: datetime) -> None:
        if key_id in self._limited:
            self._host.notify("quota_count", key_id, tokens, when.timestamp())
