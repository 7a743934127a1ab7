"""Reconciler: makes this instance's loaded models follow the recorded deployments.

``POST …/load`` and ``…/unload`` (and ``maas models deploy --load/--unload/--pin``)
record what every instance should do in the registry (``registry/deployments.py``);
the instance that answers acts at once, and every model host runs one
``Reconciler`` that applies the records whenever the ``registry`` change epoch
moves (within its 0.25 s poll) and once at start, so an instance started later
loads what is desired:

* ``loaded=True``: load the version (pinned as recorded);
* ``loaded=False``: unload it (requests already using it finish first);
* ``loaded=None`` (on demand): leave it, but apply the pin to it when loaded.

A record is applied when it changes (or at start), not on every pass: a version
unloaded everywhere and then requested again loads on demand and stays, until
the next change of its record. Pins hold for loads on demand too
(``ModelManager.desired_pins``).

Where it runs: in the process that owns the ``ModelManager``. That is the app in
``maas serve --workers 1`` and the engine process with ``--workers N`` (its
HTTP workers share the engine's models, so a reconciler in each worker would
repeat every load and unload N times). Nothing here blocks the event loop: the
registry is read on a worker thread, loads run as tasks, and a version that
fails to load is logged and kept in ``ModelManager.load_failures``
(``GET /admin/v1/loaded``) without stopping the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

import anyio.to_thread

from maas.registry.deployments import DeploymentSpec
from maas.registry.store import Registry
from maas.serving.hosts import LocalHost

log = logging.getLogger("maas.serving")


class Reconciler:
    def __init__(self, registry: Registry, host: LocalHost) -> None:
        self._registry = registry
        self._host = host
        self._applied: dict[str, DeploymentSpec] = {}
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        # ref -> the task applying its latest record; a newer record waits for it.
        self._applying: dict[str, asyncio.Task[None]] = {}
        self.passes = 0  # completed passes (tests wait on it)

    def wake(self) -> None:
        """Ask for a pass (the registry changed). Safe from any thread: the commit
        callbacks of this process's own changes run on the committing thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._wake.set)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake.set()  # the first pass: what is desired from before this start
        self._task = self._loop.create_task(self._run(), name="deployment reconciler")

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.reconcile()
            except Exception:
                # The registry unreachable: keep serving, try again at the next change.
                log.warning("reading the deployments failed", exc_info=True)
            self.passes += 1

    async def reconcile(self) -> None:
        """One pass: start applying every record that changed since the last one."""
        specs = await anyio.to_thread.run_sync(self._registry.list_deployments)
        current = {spec.ref: spec for spec in specs}
        manager = self._host.manager
        manager.desired_pins = frozenset(ref for ref, spec in current.items() if spec.pinned)
        for ref in set(self._applied) - set(current):
            # The record is gone (its version was deleted): drop the pin it held.
            previous = self._applied.pop(ref)
            model = manager.get_loaded(ref)
            if previous.pinned and model is not None:
                model.pinned = False
        for ref, spec in current.items():
            if self._applied.get(ref) == spec:
                continue
            self._applied[ref] = spec
            before = self._applying.get(ref)
            task = asyncio.get_running_loop().create_task(
                self._apply(spec, before), name=f"reconcile {ref}"
            )
            self._applying[ref] = task
            task.add_done_callback(functools.partial(self._done, ref))

    def _done(self, ref: str, task: asyncio.Task[None]) -> None:
        if self._applying.get(ref) is task:
            del self._applying[ref]

    async def _apply(self, spec: DeploymentSpec, before: asyncio.Task[None] | None) -> None:
        if before is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await before  # records of one version apply in order
        manager = self._host.manager
        try:
            if spec.loaded is True:
                version = await anyio.to_thread.run_sync(self._registry.get_version, spec.ref)
                await self._host.load(version, pinned=spec.pinned)
                log.info("deployment: loaded %s%s", spec.ref, " (pinned)" if spec.pinned else "")
            elif spec.loaded is False:
                if await self._host.unload(spec.ref):
                    log.info("deployment: unloaded %s", spec.ref)
            else:
                model = manager.get_loaded(spec.ref)
                if model is not None:
                    model.pinned = spec.pinned
        except Exception as exc:
            # Logged here and kept in manager.load_failures by the load itself.
            log.warning("deployment: applying %s failed: %s", spec.ref, exc)
            manager.load_failures.setdefault(spec.ref, str(exc))

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._applying.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._task = None
        self._applying.clear()
