"""ModelManager with real ONNX models: budget, LRU eviction, single-flight loads, retries."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from maas.config import Settings
from maas.errors import UnavailableError
from maas.registry.store import Registry
from maas.serving.manager import ModelManager
from maas.serving.metrics import ServingMetrics
from tests.helpers import make_onnx_file


def _push_models(registry: Registry, tmp_path: Path, names: list[str]) -> int:
    size = 0
    for name in names:
        path = make_onnx_file(tmp_path / name / "model.onnx")
        size = registry.push(path.parent, name, task="tensor").size_bytes
    return size


def test_lru_eviction_keeps_memory_under_budget(tmp_path: Path) -> None:
    probe = Registry(Settings(home=tmp_path / "probe"))
    size = _push_models(probe, tmp_path / "p", ["a"])
    probe.close()
    settings = Settings(home=tmp_path / "home", memory_budget_bytes=int(size * 2.5))
    registry = Registry(settings)
    _push_models(registry, tmp_path, ["a", "b", "c"])
    metrics = ServingMetrics()

    async def scenario() -> list[str]:
        manager = ModelManager(registry, settings, metrics)
        try:
            for name in ("a", "b"):
                await manager.get(registry.resolve(name))
            async with manager.use(registry.resolve("a")):
                pass  # a is now the most recently used
            await manager.get(registry.resolve("c"))
            assert manager.used_bytes() <= settings.memory_budget_bytes
            return sorted(m.key for m in manager.loaded())
        finally:
            await manager.close()

    try:
        assert asyncio.run(scenario()) == ["a:1", "c:1"]
        text = metrics.render().decode()
        assert 'maas_model_unloads_total{model="b",reason="evicted"} 1.0' in text
    finally:
        registry.close()


def test_twenty_concurrent_first_requests_trigger_one_load(
    registry: Registry, settings: Settings, tmp_path: Path
) -> None:
    _push_models(registry, tmp_path, ["solo"])
    metrics = ServingMetrics()

    async def scenario() -> set[int]:
        manager = ModelManager(registry, settings, metrics)
        version = registry.resolve("solo")
        try:
            models = await asyncio.gather(*(manager.get(version) for _ in range(20)))
            return {id(m) for m in models}
        finally:
            await manager.close()

    assert len(asyncio.run(scenario())) == 1
    assert 'maas_model_loads_total{model="solo",outcome="success"} 1.0' in metrics.render().decode()


def test_failed_load_reports_cause_and_next_request_retries(
    registry: Registry, settings: Settings, tmp_path: Path
) -> None:
    _push_models(registry, tmp_path, ["flaky"])
    version = registry.resolve("flaky")
    cached = settings.cache_dir / version.digest.removeprefix("sha256:")
    registry.materialize("flaky")
    (cached / "model.onnx").write_bytes(b"broken graph")  # the cache went bad

    async def scenario() -> None:
        manager = ModelManager(registry, settings, ServingMetrics())
        try:
            with pytest.raises(UnavailableError, match="flaky:1 failed to load"):
                await manager.get(version)
            make_onnx_file(cached / "model.onnx")  # repaired
            model = await manager.get(version)
            out = await model.batcher.submit({"x": np.ones((1, 4), dtype=np.float32)})
            assert out["y"].shape == (1, 3)
        finally:
            await manager.close()

    asyncio.run(scenario())


def test_a_model_larger_than_the_budget_is_refused_clearly(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "h", memory_budget_bytes=10)
    registry = Registry(settings)
    _push_models(registry, tmp_path, ["big"])

    async def scenario() -> None:
        manager = ModelManager(registry, settings, ServingMetrics())
        try:
            with pytest.raises(UnavailableError, match="more than the whole memory budget"):
                await manager.get(registry.resolve("big"))
        finally:
            await manager.close()

    try:
        asyncio.run(scenario())
    finally:
        registry.close()
