"""RayHost on a real Ray cluster: every host call through replicas, replica loss, autoscaling.

The pytest process is the Ray driver here (``RayHost`` in process, as in
``maas serve --ray``); tests/e2e/test_ray.py goes through a real server and
HTTP. One cluster for the session (``ray_cluster`` in tests/conftest.py), one
event loop for the module: a ``RayHost`` joins the cluster once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import numpy as np
import pytest

from maas.config import Settings
from maas.errors import UnavailableError
from maas.registry.schemas import VersionInfo
from maas.registry.store import Registry
from maas.serving import ray_apps
from maas.serving.batching import RequestCost
from maas.serving.generation import Chunk, GenerationRequest, Message, Prepared, SamplingParams
from maas.serving.ray_host import RayHost
from tests.gguf_helpers import write_tiny_llama_gguf
from tests.helpers import make_hf_dir, make_onnx_file, make_tiny_bert
from tests.ray_cluster import RayCluster

pytestmark = pytest.mark.slow

T = TypeVar("T")
CPUS = 0.25  # per replica: the session's cluster has two


class Driver:
    """A RayHost on an event loop of its own thread, for the module's tests."""

    def __init__(self, registry: Registry, settings: Settings) -> None:
        self.registry = registry
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.host = RayHost(registry, settings)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        self.run(self.host.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory, ray_cluster: RayCluster) -> Iterator[Driver]:
    root = tmp_path_factory.mktemp("ray-host")
    settings = Settings(
        home=root / "home",
        ray_address=ray_cluster.address,
        # Autoscaling adds a replica half a second after the load asks for it (Ray: 30 s).
        ray_autoscaling={"upscale_delay_s": 0.5},
    )
    registry = Registry(settings)
    registry.push(make_tiny_bert(root / "bert", classifier=True), "clf", task="text-classification")
    registry.push(make_onnx_file(root / "onnx" / "affine.onnx").parent, "affine", task="tensor")
    # Redeployed and autoscaled: an ONNX model, whose replicas start without torch.
    registry.push(make_onnx_file(root / "scaled" / "affine.onnx").parent, "scaled", task="tensor")
    registry.push(make_hf_dir(root / "broken"), "broken", task="embeddings")  # cannot load
    write_tiny_llama_gguf(root / "tiny.gguf")
    registry.push(root / "tiny.gguf", "llm")
    for name in ("clf", "affine", "llm", "scaled"):
        registry.set_deployment(name, 1, actor="test", num_cpus=CPUS)
    registry.set_deployment("clf", 1, actor="test", replicas=2)
    served = Driver(registry, settings)
    try:
        yield served
    finally:
        for name in ("clf", "affine", "llm", "broken", "scaled"):
            served.run(served.host.unload(f"{name}:1"))
        served.close()
        registry.close()


def _version(driver: Driver, name: str) -> VersionInfo:
    return driver.registry.get_version(f"{name}:1")


def test_tensor_calls_and_management_go_through_a_replica(driver: Driver) -> None:
    version = _version(driver, "affine")
    host = driver.host

    async def scenario() -> None:
        loaded = await host.load(version, pinned=True)
        assert (loaded.ref, loaded.pinned) == ("affine:1", True)
        assert await host.is_loaded("affine:1")
        inputs, outputs = await host.signature(version)
        assert [spec.name for spec in inputs] == ["x"]
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        cost = RequestCost()
        result = await host.predict_tensors(version, {"x": x}, cost)
        assert result[outputs[0].name].shape[0] == 2
        assert cost.compute_seconds > 0  # measured in the replica, metered here
        status = await host.status()
        assert [m.ref for m in status.models] == ["affine:1"]
        assert await host.unload("affine:1")
        assert not await host.is_loaded("affine:1")

    driver.run(scenario())


def test_a_model_that_cannot_load_fails_its_deployment_with_the_cause(driver: Driver) -> None:
    with pytest.raises(UnavailableError, match=r"broken:1 failed to start on Ray: .*hidden size"):
        driver.run(driver.host.predict(_version(driver, "broken"), ["x"], RequestCost()))


def test_two_replicas_lose_no_request_when_one_is_killed_under_load(driver: Driver) -> None:
    import ray

    version = _version(driver, "clf")
    host = driver.host
    texts = [f"good movie {i}" if i % 2 else f"bad film {i}" for i in range(64)]
    expected = driver.run(host.predict(version, texts, RequestCost()))
    name = host._apps["clf:1"].name
    assert driver.run(host.replicas("clf:1")) == 2
    # What LocalHost answers for this runtime (its labels come with each prediction).
    assert isinstance(driver.run(host.labels(version)), list)
    explanation = driver.run(host.explain(version, "good movie", target=None, steps=4))
    assert explanation.tokens

    async def load() -> list[Any]:
        async def one(text: str) -> Any:
            (result,) = await host.predict(version, [text], RequestCost())
            return result

        tasks = [asyncio.ensure_future(one(text)) for text in texts]
        await asyncio.sleep(0.02)  # some are in flight on each replica now
        await asyncio.to_thread(_kill_one_replica, ray, name)
        return list(await asyncio.gather(*tasks))

    answers = driver.run(load())
    assert [_best(a) for a in answers] == [_best(e) for e in expected]
    deadline = time.monotonic() + 60
    while driver.run(host.replicas("clf:1")) < 2:  # Serve starts a replacement
        assert time.monotonic() < deadline, "the killed replica was not replaced"
        time.sleep(0.5)


def _best(classification: Any) -> tuple[str, float]:
    label, probability = classification.labels[0]
    return label, round(probability, 4)


def _kill_one_replica(ray: Any, app: str) -> None:
    names = [
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith(f"SERVE_REPLICA::{app}#")
    ]
    assert len(names) == 2
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)


def test_generation_streams_through_a_replica_and_closing_frees_it(driver: Driver) -> None:
    version = _version(driver, "llm")
    host = driver.host
    request = GenerationRequest(
        messages=(Message("user", "hello"),), params=SamplingParams(max_tokens=200)
    )

    async def scenario() -> tuple[Prepared, list[Chunk], int]:
        stream = host.generate(version, request)
        prepared = await anext(stream)
        assert isinstance(prepared, Prepared)
        chunks = [await anext(stream) for _ in range(3)]
        await stream.aclose()  # cancels the Ray request: the replica frees the sequence
        deadline = time.monotonic() + 10
        while (replica := await _replica_view(host, "llm:1")).active_requests:
            assert time.monotonic() < deadline, "the closed stream still holds the model"
            await asyncio.sleep(0.1)
        return prepared, chunks, replica.active_requests

    prepared, chunks, active = driver.run(scenario())
    assert prepared.prompt_tokens > 0 and prepared.max_tokens == 200
    assert all(isinstance(chunk, Chunk) for chunk in chunks)
    assert active == 0

    async def whole() -> list[Chunk]:
        short = GenerationRequest(prompt="hello", params=SamplingParams(max_tokens=8))
        return [e async for e in host.generate(version, short) if isinstance(e, Chunk)]

    finished = driver.run(whole())
    assert finished[-1].finish_reason in ("length", "stop")


async def _replica_view(host: RayHost, ref: str) -> Any:
    from maas.serving.ray_host import _unpack

    return _unpack(await host._apps[ref].handle.status.remote())


def test_a_changed_deployment_is_redeployed_autoscales_and_unloads(driver: Driver) -> None:
    version = _version(driver, "scaled")
    host = driver.host
    driver.run(host.load(version))
    fixed = host._apps["scaled:1"].name
    assert driver.run(host.replicas("scaled:1")) == 1
    driver.registry.set_deployment(
        "scaled", 1, actor="test", min_replicas=1, max_replicas=2, target_ongoing_requests=1
    )
    # The registry epoch moved: RayHost redeploys with the new settings, then drops the old.
    deadline = time.monotonic() + 60
    while host._apps["scaled:1"].name == fixed:
        assert time.monotonic() < deadline, "the changed settings were not redeployed"
        time.sleep(0.2)
    while fixed in ray_apps._applications():  # deleted once the new one took over
        assert time.monotonic() < deadline, "the application of the old settings stayed"
        time.sleep(0.2)

    async def load(stop: asyncio.Event) -> int:
        async def client() -> int:
            done = 0
            x = np.ones((4, 4), dtype=np.float32)
            while not stop.is_set():
                await host.predict_tensors(version, {"x": x}, RequestCost())
                done += 1
            return done

        clients = [asyncio.ensure_future(client()) for _ in range(12)]
        deadline = time.monotonic() + 45
        while await host.replicas("scaled:1") < 2:
            assert time.monotonic() < deadline, "autoscaling did not add a replica"
            await asyncio.sleep(0.5)
        stop.set()
        return sum(await asyncio.gather(*clients))

    async def scenario() -> int:
        return await load(asyncio.Event())

    assert driver.run(scenario()) > 0
    # Unloaded everywhere (a deployment record, as `maas models deploy --unload` writes).
    driver.registry.set_deployment("scaled", 1, actor="test", loaded=False)
    deadline = time.monotonic() + 30
    while "scaled:1" in host._apps or any(
        name.startswith("maas:scaled:1:") for name in ray_apps._applications()
    ):
        assert time.monotonic() < deadline, "the unloaded version kept its application"
        time.sleep(0.2)
