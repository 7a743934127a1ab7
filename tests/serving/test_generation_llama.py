"""The llama.cpp generation engine, in process: batching, cancellation, queueing, KV room.

A tiny random Llama written as a Q8_0 GGUF (tests/gguf_helpers.py), loaded by
the real llama.cpp runtime; the engine's decode loop runs on its own thread
exactly as in a server. The wire behaviour (openai client, 429, SmolLM2) is in
tests/e2e/test_openai_llama_cpp.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

from maas.errors import RateLimitedError
from maas.registry.schemas import VersionInfo
from maas.serving.generation import GenerationRequest, SamplingParams
from tests.gguf_helpers import CONTEXT, write_tiny_llama_gguf
from tests.serving.llama_engines import llama_engine, pushed

llama_cpp = pytest.importorskip("llama_cpp")

from maas.serving.generation_llama import LlamaGenerationEngine  # noqa: E402
from maas.serving.generation_llama_loop import DecodeLoop, Delivery, Sequence  # noqa: E402

PROMPTS = ["the quick brown fox", "what is the capital", "hello world", "paris is the"]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny.Q8_0.gguf"
    write_tiny_llama_gguf(path)
    return path


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[VersionInfo]:
    yield from pushed(tmp_path_factory.mktemp("home"), tiny_gguf)


async def _tokens(engine: LlamaGenerationEngine, prompt: str, params: SamplingParams) -> list[int]:
    ids = engine.llama.encode_text(prompt)
    assert params.max_tokens is not None
    tokens: list[int] = []
    async with aclosing(engine._steps(ids, params, params.max_tokens)) as steps:
        async for new, _, _ in steps:
            tokens.extend(new)
    return tokens


async def _run(loop: DecodeLoop, ids: list[int], params: SamplingParams) -> Sequence:
    """One sequence straight through the decode loop (past the engine's admission)."""
    assert params.max_tokens is not None
    deliveries: asyncio.Queue[Delivery] = asyncio.Queue()
    sequence = Sequence(ids, params.max_tokens, params, deliveries.put_nowait)
    loop.submit(sequence)
    while True:
        item = await deliveries.get()
        assert not isinstance(item, BaseException)
        if item[2] is not None:
            return sequence


def _llama_greedy(path: Path, prompt: str, max_tokens: int) -> list[int]:
    """llama.cpp's own single-sequence greedy tokens (llama-cpp-python's Llama)."""
    llm: Any = llama_cpp.Llama(str(path), n_ctx=CONTEXT, flash_attn=False, verbose=False)
    tokens: list[int] = []
    for token in llm.generate(llm.tokenize(prompt.encode(), add_bos=True), temp=0.0):
        if llm.token_eos() == token:
            break
        tokens.append(int(token))
        if len(tokens) == max_tokens:
            break
    return tokens


def test_runtime_reads_the_gguf_limits_template_and_memory(
    tiny_gguf: Path, version: VersionInfo
) -> None:
    file_size = tiny_gguf.stat().st_size

    async def main() -> None:
        async with llama_engine(tiny_gguf, version) as engine:
            runtime = engine.llama
            assert runtime.context_length == CONTEXT
            assert runtime.has_chat_template
            assert 2 in runtime.eos_token_ids
            assert runtime.memory_bytes() > file_size // 2

    asyncio.run(main())


def test_batched_greedy_tokens_equal_llama_cpp_one_sequence_at_a_time(
    tiny_gguf: Path, version: VersionInfo
) -> None:
    expected = [_llama_greedy(tiny_gguf, p, 20) for p in PROMPTS]

    async def main() -> list[list[int]]:
        async with llama_engine(tiny_gguf, version) as engine:
            greedy = SamplingParams(max_tokens=20, temperature=0)

            # Arriving one after another: prompts are read while others decode.
            async def late(i: int, prompt: str) -> list[int]:
                await asyncio.sleep(0.002 * i)
                return await _tokens(engine, prompt, greedy)

            return await asyncio.gather(*(late(i, p) for i, p in enumerate(PROMPTS * 2)))

    got = asyncio.run(main())
    assert [g[: len(e)] for g, e in zip(got, expected * 2, strict=True)] == expected * 2


def test_a_cancelled_sequence_is_freed_within_one_step(
    tiny_gguf: Path, version: VersionInfo
) -> None:
    async def main() -> None:
        async with llama_engine(tiny_gguf, version, sequences=1, queued=1) as engine:
            params = SamplingParams(max_tokens=CONTEXT - 16, temperature=1.0, seed=3)
            ids = engine.llama.encode_text("the quick brown fox")
            deliveries: asyncio.Queue[Delivery] = asyncio.Queue()
            sequence = Sequence(ids, CONTEXT - 16, params, deliveries.put_nowait)
            loop = engine._decode_loop()
            loop.submit(sequence)
            await deliveries.get()
            loop.cancel(sequence)
            # One slot: the next request is admitted only once the cancelled one is out.
            after = await _tokens(engine, "hello", SamplingParams(max_tokens=3, temperature=0))
            assert len(after) >= 1
            assert sequence.released_at - sequence.cancelled_at <= 1
            assert sequence.generated < CONTEXT - 16
            assert engine.kv_cache_usage() == 0

    asyncio.run(main())


def test_closing_a_stream_frees_the_slot_for_the_next_request(
    tiny_gguf: Path, version: VersionInfo
) -> None:
    async def main() -> None:
        async with llama_engine(tiny_gguf, version, sequences=1, queued=0) as engine:
            ids = engine.llama.encode_text("the quick brown fox")
            params = SamplingParams(max_tokens=CONTEXT - 16, temperature=1.0)
            async with aclosing(engine.generate(ids, params)) as chunks:
                await chunks.__anext__()
            assert (engine.inflight, engine.running) == (0, 0)
            after = await _tokens(engine, "hello", SamplingParams(max_tokens=3, temperature=0))
            assert len(after) >= 1

    asyncio.run(main())


def test_requests_past_running_and_queued_sequences_are_refused_with_429(
    tiny_gguf: Path, version: VersionInfo
) -> None:
    async def main() -> None:
        async with llama_engine(tiny_gguf, version, sequences=1, queued=1) as engine:
            ids = engine.llama.encode_text("the quick brown fox")
            params = SamplingParams(max_tokens=CONTEXT - 16, temperature=1.0)
            async with aclosing(engine.generate(ids, params, n=2)) as both:
                await both.__anext__()
                with pytest.raises(RateLimitedError):
                    await engine.prepare(GenerationRequest(prompt="x", params=params))
            refused_then_taken = await engine.prepare(GenerationRequest(prompt="x", params=params))
            assert refused_then_taken[0] == engine.llama.encode_text("x")

    asyncio.run(main())


def test_same_seed_same_tokens_other_seed_other_tokens(
    tiny_gguf: Path, version: VersionInfo
) -> None:
    async def main() -> list[list[int]]:
        async with llama_engine(tiny_gguf, version) as engine:
            return [
                await _tokens(engine, "hello world", SamplingParams(max_tokens=16, seed=seed))
                for seed in (5, 5, 6)
            ]

    first, again, other = asyncio.run(main())
    assert first == again
    assert first != other


# A shared start (a system prompt) long enough to matter, short enough for the
# tiny model's 256-token context with a question and an answer after it.
SHARED = "the quick brown fox jumps over the lazy dog, what is the capital of france? " * 5


def test_a_shared_prefix_is_read_once_and_changes_no_token(
    tiny_gguf: Path, version: VersionInfo
) -> None:
    questions = [SHARED + q for q in ("the quick brown fox", "hello world", "paris is the")]
    expected = [_llama_greedy(tiny_gguf, q, 12) for q in questions]
    greedy = SamplingParams(max_tokens=12, temperature=0)

    async def main() -> None:
        async with llama_engine(tiny_gguf, version) as engine:
            shared = len(engine.llama.encode_text(SHARED))
            assert shared > 100
            got = [await _tokens(engine, q, greedy) for q in questions]
            # Concurrent ones reuse the cells of those still running, too.
            got_together = await asyncio.gather(*(_tokens(engine, q, greedy) for q in questions))
            metrics = engine.metrics
            cached = metrics.prefix_cached_tokens.labels("tiny")._value.get()
            hits = metrics.prefix_hits.labels("tiny")._value.get()
            queries = metrics.prefix_queries.labels("tiny")._value.get()
        assert [g[: len(e)] for g, e in zip(got, expected, strict=True)] == expected
        assert [g[: len(e)] for g, e in zip(got_together, expected, strict=True)] == expected
        assert queries == 6
        assert hits >= 5  # only the very first prompt found nothing
        assert cached >= 5 * (shared - 1)

    asyncio.run(main())


def test_parked_cells_give_way_to_running_sequences(tiny_gguf: Path, version: VersionInfo) -> None:
    """Two sequences that need most of the cache: the parked one is dropped to make room."""

    async def main() -> None:
        async with llama_engine(tiny_gguf, version, sequences=2, kv=512) as engine:
            loop = engine._decode_loop()
            short = SamplingParams(max_tokens=8, temperature=0)
            long = SamplingParams(max_tokens=200, temperature=0)
            text = "the quick brown fox jumps over the lazy dog, what is the capital? " * 2
            parked, first, second = (engine.llama.encode_text(f"{i} {text}") for i in range(3))
            assert 2 * (len(first) + 200) + len(parked) + 8 > loop.cells
            assert (await _run(loop, parked, short)).cached == 0
            assert (await _run(loop, parked, short)).cached == len(parked) - 1  # kept
            assert len(loop._prefix) == 1
            await asyncio.gather(_run(loop, first, long), _run(loop, second, long))
            # Its cells were dropped to admit the second of the two.
            assert (await _run(loop, parked, short)).cached == 0

    asyncio.run(main())


def test_with_every_sequence_id_taken_a_parked_match_is_taken_over(
    tiny_gguf: Path, version: VersionInfo
) -> None:
    """Two ids (one running, one parked): the third sequence takes the parked one's id."""
    question = SHARED + "the quick brown fox"
    expected = _llama_greedy(tiny_gguf, question, 8)

    async def main() -> None:
        async with llama_engine(tiny_gguf, version, sequences=1, parked=1) as engine:
            loop = engine._decode_loop()
            greedy = SamplingParams(max_tokens=8, temperature=0)
            ids = engine.llama.encode_text(question)
            first = await _run(loop, ids, greedy)
            long = SamplingParams(max_tokens=64, temperature=0)
            # Both submitted at once: one copies the parked cells into the free id,
            # the other finds no free id and takes the parked sequence over.
            second, third = await asyncio.gather(_run(loop, ids, long), _run(loop, ids, greedy))
        assert first.cached == 0
        assert second.cached == third.cached == len(ids) - 1
        assert {second.seq_id, third.seq_id} == {0, 1}
        for sequence in (first, second, third):
            assert sequence.output[: len(expected)] == expected

    asyncio.run(main())
