"""Resolver: the version a reference names, cached, with zero-downtime switches.

Resolution (``model``, ``model:3``, ``model@alias``) is three database queries
on a worker thread (about 1 ms here, holding the GIL), so the answers are
cached and the request path queries nothing. The server empties the cache
whenever the registry changes (``forget``): at once for a change made in this
process, within the change-epoch poll (0.25 s) for one made by another process
sharing the database; ``RESOLVE_TTL_SECONDS`` bounds an entry's life besides.

Zero-downtime switch: when a reference names another version after a change
(an alias moved, a new latest version) and its old version is loaded here while
the new one is not, requests keep getting the old version while the new one
loads in the background (runtimes warm up with a first forward at load), for up
to ``warm_timeout`` seconds; the first resolution after that switches. The
references in the cache are resolved again in the background right after each
change, so a switch starts at once, requests or not. So no
request waits for a load because an alias moved, and each is answered by the
one version it resolved to. Deleting a model is never held: it answers 404 at
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import anyio.to_thread

from maas.errors import NotFoundError
from maas.registry.refs import ModelRef
from maas.registry.schemas import VersionInfo
from maas.registry.store import Registry
from maas.serving.hosts import ModelHost

log = logging.getLogger("maas.serving")

# A safety net only: the server drops the cache whenever the registry changes.
RESOLVE_TTL_SECONDS = 60.0
_MAX_ENTRIES = 4096
_REVISITED = 256  # references re-resolved in the background after a change


@dataclass(frozen=True, slots=True)
class _Switch:
    """A reference moving to ``target``, kept on its old version until that loads."""

    target: str
    deadline: float
    task: asyncio.Task[None]


class Resolver:
    def __init__(self, registry: Registry, host: ModelHost, *, warm_timeout: float) -> None:
        self._registry = registry
        self._host = host
        self.warm_timeout = warm_timeout
        self._resolved: dict[str, tuple[float, VersionInfo]] = {}
        self._forgotten = 0  # bumped by forget
        # What each reference resolved to before the last change, and the switches
        # waiting for their new version to load.
        self._previous: dict[str, VersionInfo] = {}
        self._switches: dict[str, _Switch] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._revisits: set[asyncio.Task[None]] = set()

    async def resolve(self, parsed: ModelRef) -> VersionInfo:
        key = str(parsed)
        now = time.monotonic()
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        cached = self._resolved.get(key)
        if cached is not None and now - cached[0] < RESOLVE_TTL_SECONDS:
            return cached[1]
        forgotten = self._forgotten
        try:
            version = await anyio.to_thread.run_sync(self._registry.resolve, parsed)
        except NotFoundError:
            self._previous.pop(key, None)  # deleted: nothing to hold on to
            raise
        version = await self._hold(key, version)
        # A change while it read: the answer may predate it, so do not keep it.
        if forgotten == self._forgotten:
            if len(self._resolved) > _MAX_ENTRIES:
                self._resolved = {}
            self._resolved[key] = (now, version)
        return version

    def forget(self) -> None:
        """Drop every cached resolution (the registry changed); safe from any thread.

        What each reference resolved to is kept aside for ``_hold``.
        """
        self._forgotten += 1
        dropped, self._resolved = self._resolved, {}
        if dropped:
            previous = {**self._previous, **{k: v for k, (_, v) in dropped.items()}}
            self._previous = previous if len(previous) <= _MAX_ENTRIES else {}
            loop = self._loop
            if loop is not None:
                keys = list(dropped)[:_REVISITED]
                with contextlib.suppress(RuntimeError):  # the loop closed: nothing to revisit
                    loop.call_soon_threadsafe(self._revisit_soon, keys)

    def _revisit_soon(self, keys: list[str]) -> None:
        task = asyncio.get_running_loop().create_task(self._revisit(keys), name="re-resolve")
        self._revisits.add(task)
        task.add_done_callback(self._revisits.discard)

    async def _revisit(self, keys: list[str]) -> None:
        """Resolve the references in use again right after a change, off the request path,
        so that a switch starts loading its new version before the next request (an idle
        instance too) and the requests that follow find the cache filled."""
        for key in keys:
            try:
                await self.resolve(ModelRef.parse(key))
            except Exception as exc:  # deleted, or the database is away: requests will tell
                log.debug("re-resolving %s after a change: %s", key, exc)

    async def _hold(self, key: str, version: VersionInfo) -> VersionInfo:
        """The version to serve ``key`` with, now that it resolves to ``version``."""
        previous = self._previous.get(key)
        if previous is None or (previous.ref, previous.digest) == (version.ref, version.digest):
            self._previous.pop(key, None)
            return version
        switch = self._switches.get(key)
        if switch is not None and switch.target == version.ref:
            if switch.task.done() or time.monotonic() >= switch.deadline:
                self._switches.pop(key, None)
                self._previous.pop(key, None)
                return version
            return previous
        if (
            self.warm_timeout <= 0
            or not await self._host.is_loaded(previous.ref)
            or await self._host.is_loaded(version.ref)
        ):
            self._previous.pop(key, None)  # nothing loaded to keep, or nothing to wait for
            return version
        if switch is not None:
            switch.task.cancel()  # it moved again before the last target loaded
        task = asyncio.get_running_loop().create_task(
            self._warm(key, version), name=f"warm {version.ref}"
        )
        self._switches[key] = _Switch(version.ref, time.monotonic() + self.warm_timeout, task)
        log.info("%s now names %s: serving %s until it is loaded", key, version.ref, previous.ref)
        return previous

    async def _warm(self, key: str, version: VersionInfo) -> None:
        try:
            await asyncio.wait_for(self._host.warm(version), self.warm_timeout)
        except TimeoutError:
            log.warning(
                "%s did not load within %.0f s (MAAS_WARM_TIMEOUT_SECONDS); switching anyway",
                version.ref,
                self.warm_timeout,
            )
        except Exception as exc:
            # Requests switch to it and get the load's error, as without the switch.
            log.warning("warming %s failed: %s", version.ref, exc)
        # Loaded (or given up): the next request resolves again, and switches.
        self._resolved.pop(key, None)

    async def close(self) -> None:
        """Stop the switches still warming (shutdown)."""
        for revisit in list(self._revisits):
            revisit.cancel()
        switches, self._switches = self._switches, {}
        for switch in switches.values():
            switch.task.cancel()
        for switch in switches.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await switch.task
