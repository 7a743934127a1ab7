"""DataPlane.generate over a scripted ModelHost: checks, PII policy, metering and closing.

The host here is a stand-in that speaks the generation interface (plain
dataclasses in, an async stream of ``Prepared`` then ``Chunk``s out), so these
tests need no model; ``test_generation_host.py`` runs the real engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
import pytest

from maas.errors import InvalidRequestError, NotFoundError, RateLimitedError, UnavailableError
from maas.registry.refs import ModelRef
from maas.registry.schemas import VersionInfo
from maas.registry.store import Registry
from maas.runtimes.base import TensorSpec
from maas.runtimes.explain import Explanation
from maas.security.pii import PiiBlockedError
from maas.serving.batching import RequestCost
from maas.serving.context import RequestContext
from maas.serving.dataplane import DataPlane
from maas.serving.generation import (
    Chunk,
    GenerationEvent,
    GenerationRequest,
    Message,
    Prepared,
    SamplingParams,
    TokenLogprob,
)
from maas.serving.hosts import HostStatus, LoadedView, ModelHost
from maas.serving.metrics import ServingMetrics

PHONE = "13812345678"


def _version(task: str = "text-generation", **tags: Any) -> VersionInfo:
    return VersionInfo(
        model="m",
        version=1,
        task=task,
        format="hf",
        digest="0" * 64,
        size_bytes=1,
        status="ready",
        description="",
        metadata={},
        metrics={},
        params={},
        tags=tags,
        parent=None,
        job_id=None,
        aliases=[],
        created_at=datetime.now(UTC),
        created_by=None,
    )


class _OneVersion:
    def __init__(self, version: VersionInfo) -> None:
        self.version = version

    def resolve(self, ref: ModelRef) -> VersionInfo:
        return self.version

    def get_routing(self, model: str) -> None:
        return None  # no routing policy: plain names resolve as they are


class ScriptedHost(ModelHost):
    """Answers ``generate`` with a fixed script and records how it was driven."""

    def __init__(
        self,
        chunks: list[Chunk],
        *,
        prompt_tokens: int = 5,
        max_tokens: int = 8,
        refuse: Exception | None = None,
        fail_after: Exception | None = None,
    ) -> None:
        self.chunks = chunks
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.refuse = refuse
        self.fail_after = fail_after
        self.requests: list[GenerationRequest] = []
        self.generating = False  # the caller asked past Prepared
        self.closed = False

    async def generate(
        self, version: VersionInfo, request: GenerationRequest
    ) -> AsyncGenerator[GenerationEvent, None]:
        self.requests.append(request)
        if self.refuse is not None:
            raise self.refuse
        try:
            yield Prepared(self.prompt_tokens, self.max_tokens)
            self.generating = True
            for chunk in self.chunks:
                await asyncio.sleep(0)
                yield chunk
            if self.fail_after is not None:
                raise self.fail_after
        finally:
            self.closed = True

    async def predict(self, version: VersionInfo, items: list[Any], cost: RequestCost) -> list[Any]:
        raise NotImplementedError

    async def predict_tensors(
        self, version: VersionInfo, inputs: dict[str, np.ndarray], cost: RequestCost
    ) -> dict[str, np.ndarray]:
        raise NotImplementedError

    async def labels(self, version: VersionInfo) -> list[str]:
        raise NotImplementedError

    async def signature(self, version: VersionInfo) -> tuple[list[TensorSpec], list[TensorSpec]]:
        raise NotImplementedError

    async def explain(
        self, version: VersionInfo, text: str, *, target: str | int | None, steps: int
    ) -> Explanation:
        raise NotImplementedError

    async def load(self, version: VersionInfo, *, pinned: bool = False) -> LoadedView:
        raise NotImplementedError

    async def unload(self, ref: str) -> bool:
        raise NotImplementedError

    async def status(self) -> HostStatus:
        raise NotImplementedError

    async def is_loaded(self, ref: str) -> bool:
        raise NotImplementedError


def _plane(host: ScriptedHost, version: VersionInfo | None = None) -> DataPlane:
    registry = cast(Registry, _OneVersion(version or _version()))
    return DataPlane(registry, host, ServingMetrics())


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(main())


PROMPT = GenerationRequest(prompt="hello", params=SamplingParams(max_tokens=8))
TWO = [
    Chunk("Hel", None, 1, index=0),
    Chunk("Yo", None, 1, index=1),
    Chunk("lo", "stop", 2, index=0),
    Chunk("!", "length", 3, index=1),
]


def test_chunks_pass_through_and_the_context_is_metered() -> None:
    host = ScriptedHost(TWO)
    ctx = RequestContext.local()

    async def main() -> None:
        generation = await _plane(host).generate(ctx, "m", PROMPT, route="completions")
        assert (generation.version.ref, generation.prompt_tokens, generation.max_tokens) == (
            "m:1",
            5,
            8,
        )
        assert [c async for c in generation] == TWO

    run(main)
    assert (ctx.model, ctx.version, ctx.route, ctx.status) == ("m", "1", "completions", "ok")
    assert (ctx.prompt_tokens, ctx.completion_tokens) == (5, 2 + 3)
    assert host.closed


def test_the_token_check_sees_the_worst_case_and_refuses_before_anything_generates() -> None:
    host = ScriptedHost(TWO, prompt_tokens=7, max_tokens=10)
    asked: list[int] = []

    async def refuse(needed: int) -> None:
        asked.append(needed)
        raise RateLimitedError("too many tokens", retry_after=1)

    ctx = RequestContext.local()

    async def main() -> None:
        request = GenerationRequest(prompt="hello", n=3)
        with pytest.raises(RateLimitedError):
            await _plane(host).generate(ctx, "m", request, check_tokens=refuse)

    run(main)
    assert asked == [7 + 3 * 10]
    assert (ctx.prompt_tokens, ctx.items) == (0, 0)  # nothing to meter
    assert not host.generating  # closed at Prepared: no sequence was started
    assert host.closed


def test_refusals_of_the_host_raise_from_generate_itself() -> None:
    host = ScriptedHost(TWO, refuse=InvalidRequestError("no chat template", param="messages"))
    ctx = RequestContext.local()

    async def main() -> None:
        with pytest.raises(InvalidRequestError, match="no chat template"):
            await _plane(host).generate(ctx, "m", PROMPT)

    run(main)
    assert ctx.status == InvalidRequestError.code


def test_a_model_of_another_task_is_refused_before_the_host() -> None:
    host = ScriptedHost(TWO)

    async def main() -> None:
        with pytest.raises(InvalidRequestError) as caught:
            await _plane(host, _version("embeddings")).generate(RequestContext.local(), "m", PROMPT)
        assert caught.value.param == "model"

    run(main)
    assert host.requests == []


def test_an_archived_version_is_not_found() -> None:
    version = _version().model_copy(update={"status": "archived"})

    async def main() -> None:
        with pytest.raises(NotFoundError):
            await _plane(ScriptedHost(TWO), version).generate(RequestContext.local(), "m", PROMPT)

    run(main)


def test_input_pii_is_redacted_before_the_host_sees_it() -> None:
    host = ScriptedHost(TWO)
    request = GenerationRequest(
        messages=(Message("system", "be brief"), Message("user", f"call me on {PHONE}")),
    )

    async def main() -> None:
        version = _version(pii_policy="redact:input")
        generation = await _plane(host, version).generate(RequestContext.local(), "m", request)
        await generation.aclose()

    run(main)
    (seen,) = host.requests
    assert [m.role for m in seen.messages] == ["system", "user"]
    assert seen.messages[0].content == "be brief"
    assert PHONE not in seen.messages[1].content
    assert "[PHONE]" in seen.messages[1].content


def test_input_pii_under_a_block_policy_never_reaches_the_host() -> None:
    host = ScriptedHost(TWO)

    async def main() -> None:
        version = _version(pii_policy="block")
        request = GenerationRequest(prompt=f"my number is {PHONE}")
        with pytest.raises(PiiBlockedError):
            await _plane(host, version).generate(RequestContext.local(), "m", request)

    run(main)
    assert host.requests == []


def test_output_pii_is_redacted_per_sequence_and_logprobs_are_dropped() -> None:
    logprob = (TokenLogprob("138", -0.1),)
    chunks = [
        Chunk("call 138", None, 2, logprob, index=0),
        Chunk("ok", "stop", 1, logprob, index=1),
        Chunk(f"{PHONE[3:]} now", "stop", 4, logprob, index=0),
    ]
    host = ScriptedHost(chunks)
    ctx = RequestContext.local()

    async def main() -> None:
        version = _version(pii_policy="redact:output")
        generation = await _plane(host, version).generate(ctx, "m", PROMPT)
        got = [c async for c in generation]
        assert got == [
            Chunk("ok", "stop", 1, (), index=1),
            Chunk("call [PHONE] now", "stop", 4, (), index=0),
        ]

    run(main)
    assert ctx.completion_tokens == 5


def test_output_pii_under_a_block_policy_ends_the_stream_with_an_error() -> None:
    host = ScriptedHost([Chunk(f"call {PHONE}", "stop", 3)])

    async def main() -> None:
        version = _version(pii_policy="block:output")
        generation = await _plane(host, version).generate(RequestContext.local(), "m", PROMPT)
        with pytest.raises(PiiBlockedError):
            async for _ in generation:
                pass

    run(main)
    assert host.closed


def test_closing_the_generation_closes_the_host_stream() -> None:
    host = ScriptedHost(TWO)
    ctx = RequestContext.local()

    async def main() -> None:
        generation = await _plane(host).generate(ctx, "m", PROMPT)
        first = await anext(generation)
        assert first == TWO[0]
        assert not host.closed
        await generation.aclose()
        assert host.closed

    run(main)
    assert ctx.completion_tokens == 1


def test_an_error_after_the_start_ends_the_iteration() -> None:
    host = ScriptedHost(TWO[:1], fail_after=UnavailableError("engine went away"))
    ctx = RequestContext.local()

    async def main() -> None:
        generation = await _plane(host).generate(ctx, "m", PROMPT)
        got = []
        with pytest.raises(UnavailableError):
            async for chunk in generation:
                got.append(chunk)
        assert got == TWO[:1]

    run(main)
    assert ctx.status == UnavailableError.code


@pytest.mark.parametrize(
    "value",
    [
        GenerationRequest(
            messages=(Message("user", "hi"),),
            params=SamplingParams(max_tokens=3, stop=("a", "b"), top_logprobs=2, seed=4),
            n=2,
        ),
        GenerationRequest(prompt="hi"),
        Prepared(3, 9),
        Chunk("x", "stop", 2, (TokenLogprob("x", -0.5, (("x", -0.5), ("y", -1.0))),), index=1),
    ],
)
def test_the_generation_interface_survives_the_engine_wire(value: object) -> None:
    from maas.serving.engine import wire

    assert wire.unpackb(wire.packb(value)) == value


def test_a_request_has_messages_or_a_prompt() -> None:
    with pytest.raises(ValueError, match="either"):
        GenerationRequest()
    with pytest.raises(ValueError, match="either"):
        GenerationRequest(messages=(Message("user", "x"),), prompt="x")
    with pytest.raises(ValueError, match="n must"):
        GenerationRequest(prompt="x", n=0)


def test_a_request_whose_caller_went_away_is_counted_as_cancelled() -> None:
    plane = _plane(ScriptedHost(TWO))
    with pytest.raises(asyncio.CancelledError), plane.track(RequestContext.local(), "x", "m"):
        raise asyncio.CancelledError
    with pytest.raises(RuntimeError), plane.track(RequestContext.local(), "x", "m"):
        raise RuntimeError("a bug")
    sample = plane.metrics.registry.get_sample_value
    labels = {"model": "m", "version": "", "route": "x"}
    assert sample("maas_requests_total", {**labels, "status": "cancelled"}) == 1
    assert sample("maas_requests_total", {**labels, "status": "internal_error"}) == 1
