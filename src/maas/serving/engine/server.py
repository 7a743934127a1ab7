"""The engine process: one per machine, it holds the loaded models of every HTTP worker.

``maas serve --workers N`` starts N HTTP worker processes and this one engine
process. The workers authenticate, validate and encode; each model's weights,
its batcher and its generation engine live here, once, so requests from every
worker share the same batches.

Protocol (a Unix socket, one connection per worker, framed by ``channel``;
``wire`` encodes): a request is ``[call id, op, args]``; the answer is ``[call id, "ok", value]``
or ``[call id, "error", MaasError]``. Each request runs as its own task, so a
slow load never holds up other models' requests. Without Redis, the engine also
keeps the rate-limit windows (``acquire_request``, ``check_tokens``,
``record_tokens``), so a key's RPM/TPM hold across every worker; and always the
monthly quota counters (``quota_check``; ``quota_count``, a notification: call
id -1, never answered). ``generate`` answers with a
stream: ``[call id, "event", Prepared]``, then (after the worker's ``resume``,
so a worker that refuses the token budget costs no generation) one
``[call id, "event", Chunk]`` per chunk and ``[call id, "end", None]``; a
``cancel`` (the HTTP client went away) closes the stream and frees its slots. ``predict`` and
``predict_tensors`` also send back the queue and compute seconds the batcher
measured, for usage metering in the worker.

A worker whose connection drops (it died or was replaced) has its generation
streams cancelled, so their sequences' slots are freed at once.

Run as ``python -m maas.serving.engine SOCKET_PATH``; settings come from the
environment like every maas process. Alone, SIGTERM or SIGINT stops it. Under the
supervisor (``--supervised``) only the supervisor does, by closing the engine's
standard input once every HTTP worker has drained (``cli/serve.py``): a signal sent
to the whole process group — Ctrl-C in a terminal, systemd's default ``KillMode`` —
reaches the engine at the same time as the workers, and stopping then unloaded the
models under the streams the workers were still draining (each ended at once with
"the model is unloading"). Closed standard input also means the supervisor died
(even by SIGKILL): the engine does not outlive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from maas.config import Settings
from maas.errors import MaasError
from maas.registry.epochs import REGISTRY, EpochWatcher
from maas.registry.store import Registry
from maas.security.limits import RateLimiter
from maas.security.quotas import QuotaCounters
from maas.serving.batching import RequestCost
from maas.serving.engine import wire
from maas.serving.engine.channel import Connection
from maas.serving.generation import Prepared
from maas.serving.hosts import LocalHost
from maas.serving.manager import ModelManager
from maas.serving.metrics import ServingMetrics
from maas.serving.reconcile import Reconciler

log = logging.getLogger("maas.engine")


class EngineServer:
    """Answers ``RemoteHost`` calls from a ``LocalHost``."""

    def __init__(
        self, host: LocalHost, metrics: ServingMetrics, path: str, quotas: QuotaCounters
    ) -> None:
        self.host = host
        # Rate-limit windows shared by every worker (used when there is no Redis).
        self.limiter = RateLimiter()
        # Monthly quota counters shared by every worker.
        self.quotas = quotas
        self.metrics = metrics
        self.path = path
        self._tasks: set[asyncio.Task[None]] = set()
        # Running generation streams by (worker connection, call id): resume and cancel.
        self._streams: dict[tuple[Connection, int], tuple[asyncio.Task[None], asyncio.Event]] = {}
        self._ops: dict[str, Callable[..., Awaitable[Any]]] = {
            "predict": self._predict,
            "predict_tensors": self._predict_tensors,
            "labels": host.labels,
            "cancel_items": host.cancel,
            "signature": host.signature,
            "explain": self._explain,
            "load": self._load,
            "unload": host.unload,
            "warm": host.warm,
            "status": host.status,
            "is_loaded": host.is_loaded,
            "metrics": self._metrics,
            "acquire_request": self.limiter.acquire_request,
            "check_tokens": self.limiter.check_tokens,
            "acquire_units": self.limiter.acquire_units,
            "record_tokens": self.limiter.record_tokens,
            "quota_check": self._quota_check,
            "quota_count": self._quota_count,
            "ping": self._ping,
        }

    async def _predict(self, version: Any, items: list[Any]) -> tuple[Any, float, float]:
        cost = RequestCost()
        results = await self.host.predict(version, items, cost)
        return results, cost.queue_seconds, cost.compute_seconds

    async def _predict_tensors(self, version: Any, inputs: Any) -> tuple[Any, float, float]:
        cost = RequestCost()
        outputs = await self.host.predict_tensors(version, inputs, cost)
        return outputs, cost.queue_seconds, cost.compute_seconds

    async def _explain(self, version: Any, text: str, target: Any, steps: int) -> Any:
        return await self.host.explain(version, text, target=target, steps=steps)

    async def _load(self, version: Any, pinned: bool) -> Any:
        return await self.host.load(version, pinned=pinned)

    async def _quota_check(
        self, key_id: int, request_quota: int | None, token_quota: int | None, needed: int
    ) -> None:
        await self.quotas.check(
            key_id, request_quota=request_quota, token_quota=token_quota, tokens_needed=needed
        )

    async def _quota_count(self, key_id: int, tokens: int, timestamp: float) -> None:
        self.quotas.count(key_id, tokens, datetime.fromtimestamp(timestamp, UTC))

    async def _metrics(self) -> bytes:
        return self.metrics.render()

    async def _ping(self) -> str:
        return "pong"

    async def serve(self, stop: asyncio.Event) -> None:
        server = await asyncio.get_running_loop().create_unix_server(
            lambda: Connection(self._receive, self._lost), self.path
        )
        log.info("engine listening on %s", self.path)
        await stop.wait()
        server.close()
        for task in list(self._tasks):
            task.cancel()

    def _receive(self, worker: Connection, payload: bytes) -> None:
        task = asyncio.ensure_future(self._handle(worker, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _lost(self, worker: Connection) -> None:
        for (owner, _), (task, _) in list(self._streams.items()):
            if owner is worker:
                task.cancel()

    async def _send(self, worker: Connection, answer: list[Any]) -> None:
        # Never blocks: the transport keeps what the worker has not read yet, in order.
        if not worker.closed:
            worker.send(wire.packb(answer))

    async def _stream(
        self, worker: Connection, call_id: int, version: Any, request: Any, resume: asyncio.Event
    ) -> None:
        stream = self.host.generate(version, request)
        try:
            async for event in stream:
                await self._send(worker, [call_id, "event", event])
                if isinstance(event, Prepared):
                    await resume.wait()
            await self._send(worker, [call_id, "end", None])
        except MaasError as exc:
            await self._send(worker, [call_id, "error", exc])
        except Exception as exc:
            log.exception("engine: generation failed")
            error = MaasError(f"engine error: {type(exc).__name__}: {exc}")
            await self._send(worker, [call_id, "error", error])
        finally:
            await stream.aclose()
            self._streams.pop((worker, call_id), None)

    def _control(self, worker: Connection, op: str, call_id: int, args: list[Any]) -> bool:
        """Generation stream control; True when ``op`` was one."""
        if op == "generate":
            resume = asyncio.Event()
            version, request = args
            task = asyncio.ensure_future(self._stream(worker, call_id, version, request, resume))
            self._streams[(worker, call_id)] = (task, resume)
            return True
        if op in ("resume", "cancel"):
            running = self._streams.get((worker, int(args[0])))
            if running is not None:
                if op == "resume":
                    running[1].set()
                else:
                    running[0].cancel()
            return True
        return False

    async def _handle(self, worker: Connection, payload: bytes) -> None:
        call_id: int = -1
        try:
            call_id, op, args = wire.unpackb(payload)
            if self._control(worker, op, call_id, args):
                return
            handler = self._ops.get(op)
            if handler is None:
                raise MaasError(f"engine: unknown operation {op!r}")
            answer = [call_id, "ok", await handler(*args)]
        except MaasError as exc:
            answer = [call_id, "error", exc]
        except Exception as exc:
            log.exception("engine: %s failed", payload[:64])
            answer = [call_id, "error", MaasError(f"engine error: {type(exc).__name__}: {exc}")]
        if call_id >= 0:  # -1: a notification, nobody waits for its answer
            await self._send(worker, answer)


async def run_engine(settings: Settings, path: str, *, supervised: bool = False) -> None:
    registry = Registry(settings)
    metrics = ServingMetrics()
    host = LocalHost(ModelManager(registry, settings, metrics))
    server = EngineServer(host, metrics, path, QuotaCounters(registry.db))
    # The one reconciler of this instance's models: the workers run none, since they
    # share these models (serving/reconcile.py). Its own epoch watcher: the workers'
    # watchers only drop their caches.
    reconciler = Reconciler(registry, host)
    watcher = EpochWatcher(registry.db)
    watcher.on(REGISTRY, reconciler.wake)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        if supervised:
            loop.add_signal_handler(sig, _ignore_signal, sig)
        else:
            loop.add_signal_handler(sig, stop.set)
    if supervised:
        threading.Thread(
            target=_stop_at_stdin_eof, args=(loop, stop), name="engine stdin", daemon=True
        ).start()
    try:
        await watcher.start()
        await reconciler.start()
        await server.serve(stop)
    finally:
        await watcher.close()
        await reconciler.close()
        await host.close()
        registry.close()


def _ignore_signal(sig: int) -> None:
    log.info(
        "%s ignored: the supervisor stops the engine once its HTTP workers have drained",
        signal.Signals(sig).name,
    )


def _stop_at_stdin_eof(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Block until the supervisor closes our standard input (or dies), then stop."""
    try:
        while os.read(0, 4096):
            pass  # the supervisor writes nothing; bytes would be ignored
    except OSError:
        pass  # no usable standard input: the same as closed
    with contextlib.suppress(RuntimeError):  # the loop already closed: stopped anyway
        loop.call_soon_threadsafe(stop.set)
