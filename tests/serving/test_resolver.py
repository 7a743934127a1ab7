"""Zero-downtime switches: an alias that moved keeps its loaded version until the new one loads.

A real registry, a real ModelManager and two tiny ONNX versions whose answers
differ (bias 1 and 10), through the DataPlane as the routes call it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from maas.config import Settings
from maas.errors import NotFoundError, UnavailableError
from maas.registry.store import Registry
from maas.security.admission import Admitted
from maas.serving.context import RequestContext
from maas.serving.dataplane import DataPlane
from maas.serving.hosts import LocalHost
from maas.serving.manager import ModelManager
from maas.serving.metrics import ServingMetrics
from tests.helpers import make_onnx_file

X = {"x": np.array([[1.0, 0.0, 0.0, 0.0]], dtype=np.float32)}


def onnx_with_bias(path: Path, bias: float) -> Path:
    model = onnx.load(str(make_onnx_file(path)))
    for init in model.graph.initializer:
        if init.name == "b":
            init.CopyFrom(numpy_helper.from_array(np.full(3, bias, dtype=np.float32), "b"))
    onnx.save(model, str(path))
    return path.parent


@pytest.fixture
def two_versions(registry: Registry, tmp_path: Path) -> Iterator[Registry]:
    registry.push(onnx_with_bias(tmp_path / "v1" / "m.onnx", 1.0), "affine", task="tensor")
    registry.push(onnx_with_bias(tmp_path / "v2" / "m.onnx", 10.0), "affine")
    yield registry


def dataplane(registry: Registry, settings: Settings, warm_timeout: float = 60.0) -> DataPlane:
    manager = ModelManager(registry, settings, ServingMetrics())
    plane = DataPlane(registry, LocalHost(manager), ServingMetrics(), warm_timeout=warm_timeout)
    registry.db.on_commit("registry", plane.forget_resolved)  # as create_app wires it
    return plane


async def answer(plane: DataPlane) -> tuple[int, float]:
    """(version, bias) of one request: the version it resolved to, and what computed it."""
    ctx = RequestContext(Admitted(key=None, metered=False))
    result = await plane.infer(ctx, "affine", X)
    return result.version.version, float(result.outputs["y"][0, 0])


def test_an_alias_move_serves_the_loaded_version_until_the_new_one_is_loaded(
    two_versions: Registry, settings: Settings
) -> None:
    async def scenario() -> list[tuple[int, float]]:
        plane = dataplane(two_versions, settings)
        try:
            first = await answer(plane)  # loads 1
            two_versions.set_alias("affine", "production", 2)
            during = await answer(plane)  # 2 starts loading; this one is 1's
            while not await plane.host.is_loaded("affine:2"):  # noqa: ASYNC110 - polls the host
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # the switch ends once its load returned
            after = await answer(plane)
            return [first, during, after]
        finally:
            await plane.close()
            await plane.host.close()

    # y[0] = x @ W + b = 0 + b for this x: 1.0 for version 1, 10.0 for version 2.
    assert asyncio.run(scenario()) == [(1, 1.0), (1, 1.0), (2, 10.0)]


def test_without_the_old_version_loaded_requests_switch_at_once(
    two_versions: Registry, settings: Settings
) -> None:
    async def scenario() -> tuple[int, float]:
        plane = dataplane(two_versions, settings)
        try:
            await plane.resolve("affine")  # resolved, never loaded
            two_versions.set_alias("affine", "production", 2)
            return await answer(plane)
        finally:
            await plane.host.close()

    assert asyncio.run(scenario()) == (2, 10.0)


def test_a_warm_timeout_of_zero_switches_at_once(
    two_versions: Registry, settings: Settings
) -> None:
    async def scenario() -> tuple[int, float]:
        plane = dataplane(two_versions, settings, warm_timeout=0)
        try:
            await answer(plane)
            two_versions.set_alias("affine", "production", 2)
            return await answer(plane)
        finally:
            await plane.host.close()

    assert asyncio.run(scenario()) == (2, 10.0)


def test_a_new_version_that_fails_to_load_is_switched_to_after_the_attempt(
    two_versions: Registry, settings: Settings
) -> None:
    v2 = two_versions.resolve("affine:2")
    two_versions.materialize("affine:2")
    cached = settings.cache_dir / v2.digest.removeprefix("sha256:")
    (cached / "m.onnx").write_bytes(b"broken graph")

    async def scenario() -> None:
        plane = dataplane(two_versions, settings)
        try:
            await answer(plane)
            two_versions.set_alias("affine", "production", 2)
            assert await answer(plane) == (1, 1.0)  # held while 2 tries to load
            for _ in range(200):
                try:
                    await answer(plane)
                except UnavailableError as exc:
                    assert "affine:2 failed to load" in exc.message
                    return
                await asyncio.sleep(0.01)
            raise AssertionError("never switched to the version that failed to load")
        finally:
            await plane.close()
            await plane.host.close()

    asyncio.run(scenario())


def test_a_deleted_model_is_not_held(two_versions: Registry, settings: Settings) -> None:
    async def scenario() -> None:
        plane = dataplane(two_versions, settings)
        try:
            await answer(plane)
            two_versions.set_alias("affine", "production", 2)
            await answer(plane)  # a switch in progress
            two_versions.delete_alias("affine", "production")
            two_versions.delete_model("affine", force=True)
            with pytest.raises(NotFoundError):
                await answer(plane)
        finally:
            await plane.close()
            await plane.host.close()

    asyncio.run(scenario())
