"""DriftMonitor composed into a real DataPlane with the real MiniLM embedding model."""

from __future__ import annotations

import asyncio
from pathlib import Path

from maas.config import Settings
from maas.registry.store import Registry
from maas.serving.context import RequestContext
from maas.serving.dataplane import DataPlane
from maas.serving.hosts import create_host
from maas.serving.metrics import ServingMetrics
from maas.serving.monitoring import DriftMonitor
from tests.monitoring_streams import reviews, shifted

WINDOW = 40


def test_embedding_drift_is_found_in_the_embedding_space(
    registry: Registry, settings: Settings, minilm_dir: Path
) -> None:
    registry.push(minilm_dir, "minilm", task="embeddings")

    async def scenario() -> tuple[dict[str, bool], bool, bool]:
        metrics = ServingMetrics()
        plane = DataPlane(registry, create_host(registry, settings, metrics), metrics)
        monitor = DriftMonitor(metrics, window=WINDOW, interval_seconds=0.0)
        plane.compose(monitor=monitor)
        try:

            async def send(texts: list[str]) -> bool:
                for start in range(0, len(texts), 4):
                    await plane.embed(RequestContext.local(), "minilm", texts[start : start + 4])
                    await monitor.settle()
                report = monitor.version_report("minilm", 1)
                assert report is not None
                return report.drifting

            calm = await send([t for t, _ in reviews(WINDOW * 3, seed=5)])
            moved = await send(shifted(WINDOW, seed=6))
            report = monitor.version_report("minilm", 1)
            assert report is not None
            return {f.feature: f.crossed for f in report.features}, calm, moved
        finally:
            await plane.host.close()

    crossed, calm, moved = asyncio.run(scenario())
    assert not calm
    assert moved
    assert crossed["embedding"]  # MMD on the vectors
    assert set(crossed) >= {"input_chars", "input_tokens", "tokens_per_char", "embedding_norm"}


def test_the_buffer_stays_bounded_when_analyses_cannot_keep_up() -> None:
    from datetime import UTC, datetime

    from maas.registry.schemas import VersionInfo
    from maas.runtimes.text_classification import Classification

    version = VersionInfo(
        model="m", version=1, task="text-classification", format="hf", digest="x",
        size_bytes=0, status="ready", description="", metadata={}, metrics={}, params={},
        tags={}, parent=None, job_id=None, aliases=[], created_at=datetime.now(UTC),
        created_by=None,
    )  # fmt: skip

    async def scenario() -> int:
        monitor = DriftMonitor(ServingMetrics(), window=50, interval_seconds=3600)
        result = Classification([("pos", 0.9), ("neg", 0.1)], 3)
        for _ in range(10_000):
            monitor.observe(version, ["some text"], [result])
        await monitor.settle()
        return monitor._states[version.ref].buffered

    assert asyncio.run(scenario()) <= 100  # two windows, whatever came in


def test_tensor_models_are_watched_column_by_column(
    registry: Registry, settings: Settings, onnx_file: Path
) -> None:
    import numpy as np

    registry.push(onnx_file.parent, "affine", task="tensor")

    async def scenario() -> tuple[bool, set[str], set[str]]:
        metrics = ServingMetrics()
        plane = DataPlane(registry, create_host(registry, settings, metrics), metrics)
        monitor = DriftMonitor(metrics, window=WINDOW, interval_seconds=0.0)
        plane.compose(monitor=monitor)
        rng = np.random.default_rng(0)
        try:
            for shift in [0.0] * (WINDOW * 3) + [3.0] * WINDOW:  # one row a request
                x = (rng.normal(size=(1, 4)) + np.array([shift, 0, 0, 0])).astype(np.float32)
                await plane.infer(RequestContext.local(), "affine", {"x": x})
                await monitor.settle()
            report = monitor.version_report("affine", 1)
            assert report is not None
            crossed = {f.feature for f in report.features if f.crossed}
            return report.drifting, crossed, {f.feature for f in report.features}
        finally:
            await plane.host.close()

    drifting, crossed, watched = asyncio.run(scenario())
    assert drifting
    # Only the first input column moved, and only it crosses (the outputs mix all four:
    # y = x @ W + b, where x[0]'s weights are the smallest, so they move too little to tell).
    assert crossed == {"input:x[0]"}
    assert watched == {f"input:x[{i}]" for i in range(4)} | {f"output:y[{j}]" for j in range(3)}
