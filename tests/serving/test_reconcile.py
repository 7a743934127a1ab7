"""The reconciler applies deployments recorded by another instance, within a second.

Two registries on one SQLite database and one artifact store stand for two
instances: "elsewhere" records, "here" runs a real ModelManager, an EpochWatcher
and a Reconciler over tiny ONNX models, as `maas serve` wires them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from maas.config import Settings
from maas.registry.epochs import REGISTRY, EpochWatcher
from maas.registry.store import Registry
from maas.serving.hosts import LocalHost
from maas.serving.manager import ModelManager
from maas.serving.metrics import ServingMetrics
from maas.serving.reconcile import Reconciler
from tests.helpers import make_onnx_file


@dataclass
class Shared:
    database_url: str
    store: Path
    root: Path

    def settings(self, name: str) -> Settings:
        return Settings(
            home=self.root / name, database_url=self.database_url, artifact_url=self.store.as_uri()
        )


@pytest.fixture
def shared(tmp_path: Path) -> Shared:
    return Shared(f"sqlite:///{tmp_path / 'shared.db'}", tmp_path / "blobs", tmp_path)


@pytest.fixture
def elsewhere(shared: Shared, tmp_path: Path) -> Iterator[Registry]:
    registry = Registry(shared.settings("elsewhere"))
    for name in ("a", "b"):
        registry.push(make_onnx_file(tmp_path / name / "model.onnx").parent, name, task="tensor")
    yield registry
    registry.close()


@asynccontextmanager
async def instance(shared: Shared) -> AsyncIterator[tuple[Reconciler, ModelManager]]:
    """One serving process: manager, host, epoch watcher and reconciler, started."""
    registry = Registry(shared.settings("here"))
    manager = ModelManager(registry, registry.settings, ServingMetrics())
    reconciler = Reconciler(registry, LocalHost(manager))
    watcher = EpochWatcher(registry.db)
    watcher.on(REGISTRY, reconciler.wake)
    await watcher.start()
    await reconciler.start()
    try:
        yield reconciler, manager
    finally:
        await watcher.close()
        await reconciler.close()
        await manager.close()
        registry.close()


async def within(seconds: float, condition: Callable[[], bool]) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, "not within the time"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def loaded(manager: ModelManager) -> dict[str, bool]:
    """ref -> pinned, of the models in memory."""
    return {m.key: m.pinned for m in manager.loaded()}


def test_a_load_recorded_elsewhere_is_applied_here_within_a_second(
    shared: Shared, elsewhere: Registry
) -> None:
    async def scenario() -> float:
        async with instance(shared) as (_, manager):
            await asyncio.sleep(0.3)  # the first pass found nothing to do
            assert loaded(manager) == {}
            elsewhere.set_deployment("a", 1, actor="t", loaded=True, pinned=True)
            delay = await within(1.0, lambda: loaded(manager) == {"a:1": True})
            elsewhere.set_deployment("a", 1, actor="t", loaded=False, pinned=False)
            await within(1.0, lambda: loaded(manager) == {})
            return delay

    print(f"\nload recorded elsewhere applied here after {asyncio.run(scenario()) * 1000:.0f} ms")


def test_an_instance_started_later_loads_what_is_desired(
    shared: Shared, elsewhere: Registry
) -> None:
    elsewhere.set_deployment("a", 1, actor="t", loaded=True)
    elsewhere.set_deployment("b", 1, actor="t", loaded=False)

    async def scenario() -> None:
        async with instance(shared) as (_, manager):
            await within(5.0, lambda: loaded(manager) == {"a:1": False})

    asyncio.run(scenario())


def test_on_demand_records_leave_models_alone_but_apply_their_pin(
    shared: Shared, elsewhere: Registry
) -> None:
    async def scenario() -> None:
        async with instance(shared) as (reconciler, manager):
            await manager.get(elsewhere.resolve("b"))  # loaded on demand by a request
            elsewhere.set_deployment("b", 1, actor="t", pinned=True)
            await within(1.0, lambda: loaded(manager) == {"b:1": True})
            # A pin recorded for a version not loaded yet holds when a request loads it.
            elsewhere.set_deployment("a", 1, actor="t", pinned=True)
            passes = reconciler.passes
            await within(1.0, lambda: reconciler.passes > passes)
            await manager.get(elsewhere.resolve("a"))
            assert loaded(manager) == {"b:1": True, "a:1": True}

    asyncio.run(scenario())


def test_a_version_that_fails_to_load_is_recorded_and_the_others_still_load(
    shared: Shared, elsewhere: Registry, tmp_path: Path
) -> None:
    source = make_onnx_file(tmp_path / "broken" / "model.onnx").parent
    (source / "README").write_text("a version of its own")  # its own digest, its own cache
    elsewhere.push(source, "broken", task="tensor")
    here = Registry(shared.settings("here"))
    version = here.resolve("broken")
    here.materialize("broken")
    cached = here.settings.cache_dir / version.digest.removeprefix("sha256:")
    (cached / "model.onnx").write_bytes(b"broken graph")  # this instance's copy went bad
    here.close()
    elsewhere.set_deployment("broken", 1, actor="t", loaded=True)
    elsewhere.set_deployment("a", 1, actor="t", loaded=True)

    async def scenario() -> None:
        async with instance(shared) as (_, manager):
            await within(5.0, lambda: "a:1" in loaded(manager) and bool(manager.load_failures))
            assert "broken:1" in manager.load_failures
            assert "broken:1" not in loaded(manager)

    asyncio.run(scenario())


def test_deleting_a_pinned_version_releases_its_pin(shared: Shared, elsewhere: Registry) -> None:
    async def scenario() -> None:
        async with instance(shared) as (_, manager):
            elsewhere.set_deployment("a", 1, actor="t", loaded=True, pinned=True)
            await within(1.0, lambda: loaded(manager) == {"a:1": True})
            elsewhere.delete_model("a", force=True)
            await within(1.0, lambda: loaded(manager) == {"a:1": False})

    asyncio.run(scenario())


def test_unload_waits_for_requests_that_use_the_model(shared: Shared, elsewhere: Registry) -> None:
    async def scenario() -> None:
        async with instance(shared) as (_, manager):
            version = elsewhere.resolve("a")
            async with manager.use(version):
                unloading = asyncio.ensure_future(manager.unload("a:1"))
                await asyncio.sleep(0.2)
                assert not unloading.done()  # the request still holds it
                assert manager.get_loaded("a:1") is None  # but no new request gets it
            assert await unloading is True

    asyncio.run(scenario())
