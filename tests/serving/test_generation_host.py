"""LocalHost.generate on a real tiny model: what comes first, what is refused, what frees."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from maas.config import Settings
from maas.errors import InvalidRequestError, RateLimitedError
from maas.registry.store import Registry
from maas.runtimes.text_generation import DEFAULT_MAX_TOKENS
from maas.serving.context import RequestContext
from maas.serving.dataplane import DataPlane
from maas.serving.generation import (
    Chunk,
    GenerationRequest,
    Message,
    Prepared,
    SamplingParams,
)
from maas.serving.hosts import LocalHost
from maas.serving.manager import ModelManager
from maas.serving.metrics import ServingMetrics
from tests.helpers import make_tiny_llm

pytestmark = pytest.mark.slow

# Greedy decoding of this model and prompt runs to max_tokens without an end-of-sequence.
PROMPT = "The quick fox"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gen-host")
    chat = make_tiny_llm(root / "chat", arch="gpt2", seed=2)
    # The same weights without a chat template.
    plain = make_tiny_llm(root / "plain", arch="gpt2", seed=2, chat=False)
    home = root / "home"
    registry = Registry(Settings(home=home))
    try:
        registry.push(chat, "m", task="text-generation")
        registry.push(plain, "plain", task="text-generation")
    finally:
        registry.close()
    return home


class Served:
    def __init__(self, registry: Registry, metrics: ServingMetrics, host: LocalHost) -> None:
        self.registry = registry
        self.metrics = metrics
        self.host = host
        self.plane = DataPlane(registry, host, metrics)

    def gauge(self, name: str) -> float:
        value = self.metrics.registry.get_sample_value(name, {"model": "m"})
        return value or 0.0

    async def engine_inflight(self) -> int:
        model = self.host.manager.get_loaded("m:1")
        assert model is not None and model.engine is not None
        return model.engine.inflight


@asynccontextmanager
async def served(home: Path, **settings: Any) -> AsyncIterator[Served]:
    config = Settings(home=home, **settings)
    registry = Registry(config)
    metrics = ServingMetrics()
    host = LocalHost(ModelManager(registry, config, metrics))
    try:
        yield Served(registry, metrics, host)
    finally:
        await host.close()
        registry.close()


def run(home: Path, body: Callable[[Served], Awaitable[None]], **settings: Any) -> None:
    async def main() -> None:
        async with served(home, **settings) as s:
            await body(s)

    asyncio.run(main())


def test_prepared_comes_first_and_nothing_generates_until_asked(home: Path) -> None:
    async def body(s: Served) -> None:
        version = await s.plane.resolve("m")
        events = s.host.generate(version, GenerationRequest(prompt=PROMPT))
        prepared = await anext(events)
        assert isinstance(prepared, Prepared)
        assert prepared.prompt_tokens > 0
        # No max_tokens: what the 256-token context leaves, at most the default.
        assert prepared.max_tokens == min(DEFAULT_MAX_TOKENS, 256 - prepared.prompt_tokens)
        assert await s.engine_inflight() == 0
        await events.aclose()
        assert await s.engine_inflight() == 0

    run(home, body)


@pytest.mark.parametrize(
    ("model", "request_", "param"),
    [
        ("plain", GenerationRequest(messages=(Message("user", "hi"),)), "messages"),
        (
            "m",
            GenerationRequest(prompt=PROMPT, params=SamplingParams(max_tokens=10_000)),
            "max_tokens",
        ),
        ("m", GenerationRequest(prompt=""), "prompt"),
        ("m", GenerationRequest(prompt="x " * 400), "prompt"),
    ],
)
def test_refusals_are_raised_by_the_first_step(
    home: Path, model: str, request_: GenerationRequest, param: str
) -> None:
    async def body(s: Served) -> None:
        version = await s.plane.resolve(model)
        with pytest.raises(InvalidRequestError) as caught:
            await anext(s.host.generate(version, request_))
        assert caught.value.param == param

    run(home, body)


def test_a_request_whose_sequences_do_not_fit_the_queue_is_refused_up_front(home: Path) -> None:
    async def body(s: Served) -> None:
        version = await s.plane.resolve("m")
        request = GenerationRequest(prompt=PROMPT, n=3)
        with pytest.raises(RateLimitedError):
            await anext(s.host.generate(version, request))

    run(home, body, max_running_sequences=1, max_queued_requests=1)


def test_n_sequences_run_side_by_side_and_each_finishes(home: Path) -> None:
    async def body(s: Served) -> None:
        ctx = RequestContext.local()
        request = GenerationRequest(
            prompt=PROMPT, params=SamplingParams(max_tokens=6, temperature=0), n=3
        )
        generation = await s.plane.generate(ctx, "m", request)
        texts: dict[int, str] = {}
        finished: dict[int, Chunk] = {}
        async for chunk in generation:
            texts[chunk.index] = texts.get(chunk.index, "") + chunk.text
            if chunk.finish_reason is not None:
                finished[chunk.index] = chunk
        assert sorted(finished) == [0, 1, 2]
        assert len(set(texts.values())) == 1  # greedy: the same text three times
        assert all(c.completion_tokens == 6 for c in finished.values())
        assert (ctx.items, ctx.completion_tokens) == (3, 18)

    run(home, body)


@pytest.mark.parametrize("n", [1, 2])
def test_closing_a_stream_mid_way_frees_its_running_sequences(home: Path, n: int) -> None:
    async def body(s: Served) -> None:
        request = GenerationRequest(
            prompt=PROMPT, params=SamplingParams(max_tokens=200, temperature=0), n=n
        )
        generation = await s.plane.generate(RequestContext.local(), "m", request)
        seen: set[int] = set()
        async for chunk in generation:
            assert chunk.finish_reason is None
            seen.add(chunk.index)
            if len(seen) == n:
                break
        assert s.gauge("maas_generation_running") == n
        await generation.aclose()
        assert s.gauge("maas_generation_running") == 0
        assert s.gauge("maas_generation_waiting") == 0
        assert await s.engine_inflight() == 0

    run(home, body)
