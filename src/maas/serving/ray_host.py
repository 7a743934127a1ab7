"""RayHost: the ``ModelHost`` of ``maas serve --ray``, whose models run as Ray Serve replicas.

maas keeps everything in front of the model — keys, limits, quotas, metering,
routing, the OpenAI and V2 protocols — and Ray Serve keeps where replicas run,
their health and their number. Each loaded version is one Ray Serve
application of ``serving.ray_replica.ModelReplica`` (``serving.ray_apps``);
its replicas, CPUs and autoscaling come from the version's deployment settings
in the registry (``Registry.get_deployment``), read when it is deployed and
again whenever the ``registry`` change epoch moves, so a changed setting is
redeployed by every instance within a poll.

**A replica lost mid-request** (killed, its node gone, OOM): the handle raises
a Ray actor error for the calls that were on it. Inference calls carry no side
effect, so each such call is retried on another replica (Ray's router already
stopped routing to the dead one; up to ``RETRIES`` times), and so is a
generation stream that had not yet sent its first event. A stream that had
already sent tokens cannot be resumed elsewhere: it ends with
``ReplicaLostError`` (503). Requests not yet started are never lost: Ray routes
them to the live replicas, and Serve starts a replacement replica.

**Generation** streams through ``handle.options(stream=True)``; closing the
stream cancels the Ray request, which cancels the replica's generator and frees
its sequences. Unlike the embedded engine, a replica starts decoding right after
``Prepared`` instead of waiting for the caller to ask for more: a stream closed
after ``Prepared`` (a refused token budget) costs the tokens of about one step.

What the data plane cannot see here: the memory budget (each replica holds one
version; Ray places replicas by their CPUs), and the replicas' own batching and
generation metrics (they stay in the replica processes; Ray's metrics export
them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio.to_thread
import numpy as np

from maas.config import Settings
from maas.errors import MaasError, NotFoundError, ReplicaLostError, UnavailableError
from maas.registry.epochs import REGISTRY, EpochWatcher
from maas.registry.schemas import VersionInfo
from maas.registry.store import Registry
from maas.runtimes.base import TensorSpec
from maas.runtimes.explain import Explanation
from maas.serving import ray_apps
from maas.serving.batching import RequestCost
from maas.serving.engine import wire
from maas.serving.generation import GenerationEvent, GenerationRequest
from maas.serving.hosts import HostStatus, LoadedView, ModelHost

log = logging.getLogger("maas.ray")

# Tries after the first when a replica is lost under a call, and the pause before each.
RETRIES = 3
RETRY_PAUSE_SECONDS = 0.2


@dataclass(eq=False)
class _Deployed:
    """One version as this instance reaches it: the application and its handles."""

    version: VersionInfo
    name: str  # the Ray Serve application
    plan: ray_apps.ReplicaPlan
    handle: Any  # ray.serve.handle.DeploymentHandle
    streams: Any  # the same handle with stream=True
    stamp: datetime | None = None  # updated_at of the deployment record it was deployed by
    pinned: bool = False
    active: int = 0
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)


class RayHost(ModelHost):
    def __init__(self, registry: Registry, settings: Settings) -> None:
        self._registry = registry
        self._settings = settings
        self._apps: dict[str, _Deployed] = {}
        self._deploying: dict[str, asyncio.Future[_Deployed]] = {}
        self._connected: asyncio.Future[None] | None = None
        self._watcher: EpochWatcher | None = None
        self._refresh: asyncio.Task[None] | None = None
        self._stale = False  # a registry change not yet looked at
        self._lost: tuple[type[BaseException], ...] = ()
        self._closing = False

    # ------------------------------------------------------------- deployment

    async def _connect(self) -> None:
        if self._connected is None:
            self._connected = asyncio.ensure_future(self._start())
        await asyncio.shield(self._connected)

    async def _start(self) -> None:
        try:
            # A worker thread: ray.init on the main thread would install its own
            # SIGTERM handler and defeat the server's graceful drain.
            await anyio.to_thread.run_sync(ray_apps.connect, self._settings)
        except BaseException:
            self._connected = None  # the next request tries again
            raise
        self._lost = _lost_errors()
        loop = asyncio.get_running_loop()
        self._watcher = EpochWatcher(self._registry.db)
        self._watcher.on(REGISTRY, self._settings_may_have_changed)

        # This process's own changes, at commit (perhaps on another thread).
        def committed() -> None:
            loop.call_soon_threadsafe(self._settings_may_have_changed)

        self._registry.db.on_commit(REGISTRY, committed)
        await self._watcher.start()

    async def _deployed(self, version: VersionInfo, *, pinned: bool = False) -> _Deployed:
        deployed = self._apps.get(version.ref)
        if deployed is not None and deployed.version.digest == version.digest:
            deployed.pinned = deployed.pinned or pinned
            return deployed
        future = self._deploying.get(version.ref)
        if future is None:
            future = asyncio.ensure_future(self._deploy(version))
            self._deploying[version.ref] = future
            future.add_done_callback(lambda _: self._deploying.pop(version.ref, None))
        deployed = await asyncio.shield(future)
        deployed.pinned = deployed.pinned or pinned
        return deployed

    async def _deploy(self, version: VersionInfo) -> _Deployed:
        if self._closing:
            raise UnavailableError("the server is shutting down")
        await self._connect()
        spec = await anyio.to_thread.run_sync(
            self._registry.get_deployment, version.model, version.version
        )
        replica_plan = ray_apps.plan(spec, self._settings)
        started = time.perf_counter()
        handle = await anyio.to_thread.run_sync(
            ray_apps.deploy, self._settings, version, replica_plan
        )
        name = ray_apps.app_name(version, replica_plan)
        log.info("%s on Ray as %s in %.1fs", version.ref, name, time.perf_counter() - started)
        previous = self._apps.get(version.ref)
        deployed = _Deployed(
            version, name, replica_plan, handle, handle.options(stream=True), spec.updated_at
        )
        if previous is not None:
            deployed.pinned, deployed.loaded_at = previous.pinned, previous.loaded_at
        self._apps[version.ref] = deployed
        # Requests go to the new application from now on; the old one (other settings)
        # finishes what it holds while Serve stops it.
        await anyio.to_thread.run_sync(ray_apps.delete_stale, version, name)
        return deployed

    def _settings_may_have_changed(self) -> None:
        """A registry change (maybe a deployment setting): redeploy what changed, off the loop."""
        if self._closing or not self._apps:
            return
        self._stale = True
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._redeploy_while_stale())

    async def _redeploy_while_stale(self) -> None:
        while self._stale:  # a change made during a pass gets a pass of its own
            self._stale = False
            await self._redeploy_changed()

    async def _redeploy_changed(self) -> None:
        for ref, deployed in list(self._apps.items()):
            version = deployed.version
            try:
                spec = await anyio.to_thread.run_sync(
                    self._registry.get_deployment, version.model, version.version
                )
            except NotFoundError:
                # The version was deleted: its requests answer 404 from now on.
                self._apps.pop(ref, None)
                await anyio.to_thread.run_sync(ray_apps.delete_version, ref)
                continue
            except Exception:
                log.exception("reading the deployment settings of %s failed", ref)
                continue
            if spec.loaded is False and spec.updated_at != deployed.stamp:
                # Unloaded everywhere (`maas models deploy --unload`, POST …/unload): the
                # application is shared, so this deletes it if the instance that was asked
                # has not yet. A later request deploys it again, on demand.
                self._apps.pop(ref, None)
                await anyio.to_thread.run_sync(ray_apps.delete_version, ref)
                continue
            if ray_apps.plan(spec, self._settings).fingerprint == deployed.plan.fingerprint:
                continue
            log.info("deployment settings of %s changed; redeploying", ref)
            try:
                # The old application serves until the new one runs.
                await self._deploy(version)
            except Exception:
                log.exception("redeploying %s failed; its previous replicas still serve", ref)

    # ------------------------------------------------------------- calls

    async def _call(self, version: VersionInfo, method: str, *args: Any) -> Any:
        """One unary replica call, retried on another replica when the one it ran on is lost."""
        for attempt in range(RETRIES + 1):
            deployed = await self._deployed(version)
            deployed.active += 1
            deployed.last_used = time.monotonic()
            try:
                raw = await getattr(deployed.handle, method).remote(*args)
            except self._lost as exc:
                if attempt == RETRIES:
                    raise ReplicaLostError(_lost_message(version, exc)) from exc
                log.warning("%s: replica lost (%s); retrying", version.ref, type(exc).__name__)
                await self._after_loss(deployed)
                continue
            except Exception as exc:
                raise _ray_error(version, exc) from exc
            finally:
                deployed.active -= 1
            return _unpack(raw)
        raise AssertionError("unreachable")

    async def _after_loss(self, deployed: _Deployed) -> None:
        await asyncio.sleep(RETRY_PAUSE_SECONDS)
        # Deleted under us (another instance redeployed it): find the current one.
        gone = not await anyio.to_thread.run_sync(ray_apps.running_replicas, deployed.name)
        if gone and self._apps.get(deployed.version.ref) is deployed:
            del self._apps[deployed.version.ref]

    async def predict(self, version: VersionInfo, items: list[Any], cost: RequestCost) -> list[Any]:
        results, queued, computed = await self._call(version, "predict", wire.packb(items))
        _add_cost(cost, queued, computed)
        return list(results)

    async def predict_tensors(
        self, version: VersionInfo, inputs: dict[str, np.ndarray], cost: RequestCost
    ) -> dict[str, np.ndarray]:
        payload = wire.packb(inputs)
        outputs, queued, computed = await self._call(version, "predict_tensors", payload)
        _add_cost(cost, queued, computed)
        return dict(outputs)

    async def labels(self, version: VersionInfo) -> list[str]:
        return list(await self._call(version, "labels"))

    async def signature(self, version: VersionInfo) -> tuple[list[TensorSpec], list[TensorSpec]]:
        inputs, outputs = await self._call(version, "signature")
        return list(inputs), list(outputs)

    async def explain(
        self, version: VersionInfo, text: str, *, target: str | int | None, steps: int
    ) -> Explanation:
        payload = wire.packb([text, target, steps])
        explanation: Explanation = await self._call(version, "explain", payload)
        return explanation

    async def generate(
        self, version: VersionInfo, request: GenerationRequest
    ) -> AsyncGenerator[GenerationEvent, None]:
        payload = wire.packb(request)
        for attempt in range(RETRIES + 1):
            deployed = await self._deployed(version)
            deployed.active += 1
            deployed.last_used = time.monotonic()
            stream = deployed.streams.generate.remote(payload)
            sent = False
            try:
                async for raw in stream:
                    event: GenerationEvent = _unpack(raw)
                    sent = True
                    yield event
                return
            except self._lost as exc:
                if sent or attempt == RETRIES:
                    raise ReplicaLostError(_lost_message(version, exc)) from exc
                log.warning("%s: replica lost before the stream began; retrying", version.ref)
                await self._after_loss(deployed)
            except MaasError:
                raise
            except Exception as exc:
                raise _ray_error(version, exc) from exc
            finally:
                deployed.active -= 1
                # Closed early, or failed: stop the replica's generator (frees its slots).
                stream.cancel()

    # ------------------------------------------------------------- management

    async def load(self, version: VersionInfo, *, pinned: bool = False) -> LoadedView:
        deployed = await self._deployed(version, pinned=pinned)
        deployed.pinned = pinned  # an explicit load without pin also releases an earlier pin
        return await self._view(deployed)

    async def unload(self, ref: str) -> bool:
        deployed = self._apps.pop(ref, None)
        if self._connected is None and deployed is None:
            return False
        await self._connect()
        deleted = await anyio.to_thread.run_sync(ray_apps.delete_version, ref)
        return deleted or deployed is not None

    async def status(self) -> HostStatus:
        views = [await self._view(d) for d in list(self._apps.values())]
        return HostStatus(
            budget_bytes=self._settings.memory_budget_bytes,
            used_bytes=sum(v.memory_bytes for v in views),
            models=views,
        )

    async def is_loaded(self, ref: str) -> bool:
        return ref in self._apps

    async def replicas(self, ref: str) -> int:
        """Running replicas of a version this instance has deployed or found (0: none)."""
        deployed = self._apps.get(ref)
        if deployed is None:
            return 0
        return await anyio.to_thread.run_sync(ray_apps.running_replicas, deployed.name)

    async def _view(self, deployed: _Deployed) -> LoadedView:
        """The version as one of its replicas reports it, with this instance's counters."""
        memory, queued = 0, 0
        # Straight to the handle: not counted as a request, not retried.
        with contextlib.suppress(Exception):
            replica: LoadedView | None = _unpack(await deployed.handle.status.remote())
            if replica is not None:
                memory, queued = replica.memory_bytes, replica.queued_items
        version = deployed.version
        return LoadedView(
            ref=version.ref,
            model=version.model,
            version=version.version,
            task=version.task,
            format=version.format,
            memory_bytes=memory,
            pinned=deployed.pinned,
            active_requests=deployed.active,
            queued_items=queued,
            loaded_at=deployed.loaded_at,
            idle_seconds=round(time.monotonic() - deployed.last_used, 3),
        )

    async def close(self) -> None:
        """Leave the cluster. Applications stay deployed for the other instances (a
        ``local`` cluster stops with this process); ``unload`` deletes one."""
        self._closing = True
        if self._refresh is not None:
            self._refresh.cancel()
        if self._watcher is not None:
            await self._watcher.close()
        if self._connected is not None:
            with contextlib.suppress(BaseException):
                await self._connected
            await anyio.to_thread.run_sync(ray_apps.disconnect)
        self._apps.clear()


def _lost_errors() -> tuple[type[BaseException], ...]:
    """Ray's errors that mean the replica (or its node) went away under a call."""
    from ray import exceptions
    from ray.serve.exceptions import ReplicaUnavailableError

    return (
        exceptions.RayActorError,  # ActorDiedError, ActorUnavailableError
        exceptions.WorkerCrashedError,
        exceptions.NodeDiedError,
        exceptions.ObjectLostError,
        ReplicaUnavailableError,
    )


def _lost_message(version: VersionInfo, exc: BaseException) -> str:
    return (
        f"the replica serving {version.ref} was lost while it ran this request "
        f"({type(exc).__name__}); Ray is replacing it, retry the request"
    )


def _ray_error(version: VersionInfo, exc: Exception) -> MaasError:
    """Any other failure of Ray itself (back-pressure, a deployment gone): 503 with the cause."""
    if isinstance(exc, MaasError):
        return exc
    return UnavailableError(f"Ray could not run {version.ref}: {type(exc).__name__}: {exc}")


def _unpack(raw: bytes) -> Any:
    kind, value = wire.unpackb(raw)
    if kind == "error":
        raise value if isinstance(value, MaasError) else MaasError(str(value))
    return value


def _add_cost(cost: RequestCost, queued: float, computed: float) -> None:
    cost.queue_seconds = max(cost.queue_seconds, queued)
    cost.compute_seconds += computed
