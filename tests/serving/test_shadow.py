"""The shadow mirror: never awaited by the caller, bounded, outcomes and agreement counted."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from maas.registry.schemas import VersionInfo
from maas.registry.store import Registry
from maas.runtimes.text_classification import Classification
from maas.serving.metrics import ServingMetrics
from maas.serving.shadow import ShadowMirror


def shadow_version(registry: Registry, hf_dir: Path) -> VersionInfo:
    registry.push(hf_dir, "clf", task="text-classification")
    return registry.push(hf_dir, "clf")


def labelled(*labels: str) -> list[Classification]:
    return [Classification(labels=[(label, 0.9), ("other", 0.1)], tokens=3) for label in labels]


def sample(metrics: ServingMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_mirrors_run_after_offer_returns_and_their_agreement_is_counted(
    registry: Registry, hf_dir: Path
) -> None:
    version = shadow_version(registry, hf_dir)
    metrics = ServingMetrics()
    recorded: list[tuple[str, Sequence[Any], Sequence[Any]]] = []
    mirror = ShadowMirror(metrics, record=lambda v, i, r: recorded.append((v.ref, i, r)))

    async def main() -> None:
        started = asyncio.Event()

        async def run() -> list[Classification]:
            started.set()
            return labelled("pos", "neg", "pos")

        assert mirror.offer(version, ["a", "b", "c"], labelled("pos", "pos", "pos"), run)
        assert not started.is_set()  # offer never runs the mirror itself
        await mirror.drain()
        await mirror.close()

    asyncio.run(main())
    labels = {"model": "clf", "version": "2"}
    assert sample(metrics, "maas_shadow_requests_total", **labels, outcome="ok") == 1
    assert sample(metrics, "maas_shadow_agreement_total", **labels, agree="true") == 2
    assert sample(metrics, "maas_shadow_agreement_total", **labels, agree="false") == 1
    assert sample(metrics, "maas_shadow_seconds_count", **labels) == 1
    assert recorded == [("clf:2", ["a", "b", "c"], labelled("pos", "neg", "pos"))]


def test_a_slow_shadow_drops_what_does_not_fit_and_a_failing_one_is_counted(
    registry: Registry, hf_dir: Path
) -> None:
    version = shadow_version(registry, hf_dir)
    metrics = ServingMetrics()
    mirror = ShadowMirror(metrics, capacity=2)

    async def main() -> None:
        release = asyncio.Event()

        async def slow() -> list[Classification]:
            await release.wait()
            return labelled("pos")

        async def broken() -> list[Classification]:
            raise RuntimeError("the shadow version failed to load")

        accepted = [mirror.offer(version, ["x"], labelled("pos"), slow) for _ in range(2)]
        await asyncio.sleep(0)  # the worker takes the first: one place frees up
        accepted += [mirror.offer(version, ["x"], labelled("pos"), broken) for _ in range(3)]
        assert accepted == [True, True, True, False, False]
        release.set()
        await mirror.drain()
        await mirror.close()

    asyncio.run(main())
    labels = {"model": "clf", "version": "2"}
    assert sample(metrics, "maas_shadow_requests_total", **labels, outcome="ok") == 2
    assert sample(metrics, "maas_shadow_requests_total", **labels, outcome="error") == 1
    assert sample(metrics, "maas_shadow_requests_total", **labels, outcome="dropped") == 2


def test_answers_that_are_not_classifications_are_not_compared(
    registry: Registry, hf_dir: Path
) -> None:
    version = shadow_version(registry, hf_dir)
    metrics = ServingMetrics()
    mirror = ShadowMirror(metrics)

    async def main() -> None:
        async def run() -> list[list[float]]:
            return [[0.1, 0.2]]

        mirror.offer(version, ["x"], [[0.3, 0.4]], run)
        await mirror.drain()
        await mirror.close()

    asyncio.run(main())
    labels = {"model": "clf", "version": "2"}
    assert sample(metrics, "maas_shadow_requests_total", **labels, outcome="ok") == 1
    assert sample(metrics, "maas_shadow_agreement_total", **labels, agree="true") == 0
