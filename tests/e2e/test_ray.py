"""`maas serve --ray` over HTTP: a real server whose models run as Ray Serve replicas.

The session's Ray cluster (``ray_cluster`` in tests/conftest.py); the server
deploys each version on its first request, with the replicas and CPUs its
deployment settings name. tests/serving/test_ray_host.py covers replica loss
and autoscaling with the host in process.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from maas.config import Settings
from maas.registry.store import Registry
from tests.e2e.conftest import LiveServer, start_server
from tests.gguf_helpers import write_tiny_llama_gguf
from tests.helpers import make_tiny_bert
from tests.ray_cluster import RayCluster

pytestmark = pytest.mark.slow

TEXTS = [f"the good movie number {i}" for i in range(8)]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, ray_cluster: RayCluster) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("ray-e2e")
    home = root / "home"
    registry = Registry(Settings(home=home))
    try:
        registry.push(make_tiny_bert(root / "enc", classifier=False), "enc", task="embeddings")
        write_tiny_llama_gguf(root / "tiny.gguf")
        registry.push(root / "tiny.gguf", "llm")
        registry.set_deployment("enc", 1, actor="test", replicas=2, num_cpus=0.25)
        registry.set_deployment("llm", 1, actor="test", num_cpus=0.25)
    finally:
        registry.close()
    server = start_server(home, {"MAAS_RAY_ADDRESS": ray_cluster.address})
    live = next(server)
    try:
        yield live
    finally:
        # The server leaves its applications deployed for other instances: remove them.
        for name in ("enc", "llm"):
            httpx.post(
                f"{live.url}/admin/v1/models/{name}/versions/1/unload",
                headers={"Authorization": f"Bearer {live.key}"},
                timeout=60,
            )
        server.close()


def test_two_replicas_answer_64_concurrent_requests_correctly(live: LiveServer) -> None:
    headers = {"Authorization": f"Bearer {live.key}"}
    url = f"{live.url}/v1/embeddings"

    def embed(client: httpx.Client, text: str) -> np.ndarray:
        response = client.post(url, json={"model": "enc", "input": text}, headers=headers)
        assert response.status_code == 200, response.text
        return np.array(response.json()["data"][0]["embedding"])

    with httpx.Client(timeout=120) as client:
        expected = {text: embed(client, text) for text in TEXTS}  # deploys on the first

    async def concurrent() -> list[tuple[str, int, dict[str, object]]]:
        async with httpx.AsyncClient(timeout=120) as client:

            async def one(text: str) -> tuple[str, int, dict[str, object]]:
                body = {"model": "enc", "input": text}
                response = await client.post(url, json=body, headers=headers)
                return text, response.status_code, response.json()

            return list(await asyncio.gather(*(one(TEXTS[i % 8]) for i in range(64))))

    answers = asyncio.run(concurrent())
    assert [status for _, status, _ in answers] == [200] * 64
    for text, _, body in answers:
        (item,) = body["data"]  # type: ignore[misc]
        np.testing.assert_allclose(item["embedding"], expected[text], rtol=1e-4, atol=1e-5)

    loaded = httpx.get(f"{live.url}/admin/v1/loaded", headers=headers, timeout=30).json()
    assert "enc:1" in [model["ref"] for model in loaded["models"]]


def test_generation_streams_through_a_replica(live: LiveServer) -> None:
    headers = {"Authorization": f"Bearer {live.key}"}
    body = {
        "model": "llm",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 12,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = []
    with (
        httpx.Client(timeout=120) as client,
        client.stream("POST", f"{live.url}/v1/chat/completions", json=body, headers=headers) as r,
    ):
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line.removeprefix("data: "))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] in ("length", "stop")
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] > 0 and usage["prompt_tokens"] > 0
