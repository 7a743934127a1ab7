"""HF embeddings runtime (real all-MiniLM-L6-v2) under the batcher: length grouping, threads."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from maas.registry.schemas import VersionInfo
from maas.runtimes.base import RuntimeContext
from maas.runtimes.embeddings import Embedding, EmbeddingInput, HFEmbeddingRuntime
from maas.serving.batching import AdaptiveBatcher, BatchContext

SHORT = ["hi", "a cat", "good morning", "北京", "ok then", "fine", "yes please", "no"]
LONG = [
    "Model serving platforms batch requests together to use the hardware well, " * 4,
    "Padding every row of a batch to its longest wastes compute on tokens nobody reads. " * 5,
    "北京是中国的首都，也是一个历史悠久的城市，有许多名胜古迹。" * 3,
    "Sentence embeddings map text to vectors whose dot products reflect meaning. " * 6,
]
# Interleaved so that arrival order mixes lengths in every batch.
MIXED: list[EmbeddingInput] = [
    item for i, short in enumerate(SHORT) for item in (short, LONG[i % len(LONG)] + str(i))
] + [[101, 7592, 2088, 102]]  # token ids count too


def version_info(model_dir: Path) -> VersionInfo:
    return VersionInfo.model_validate(
        {
            "model": "minilm",
            "version": 1,
            "task": "embeddings",
            "format": "hf",
            "digest": "sha256:" + "0" * 64,
            "size_bytes": 0,
            "status": "ready",
            "description": "",
            "metadata": {},
            "metrics": {},
            "params": {},
            "tags": {},
            "parent": None,
            "job_id": None,
            "aliases": [],
            "created_at": datetime.now(UTC),
            "created_by": None,
        }
    )


@pytest.fixture(scope="module")
def runtime(minilm_dir: Path) -> Iterator[HFEmbeddingRuntime]:
    with ThreadPoolExecutor(2, thread_name_prefix="test-compute") as pool:
        context = RuntimeContext(
            model_dir=minilm_dir, version=version_info(minilm_dir), executor=pool
        )
        loaded = HFEmbeddingRuntime(context)
        asyncio.run(loaded.load())
        yield loaded


def alone(runtime: HFEmbeddingRuntime, items: list[EmbeddingInput]) -> list[np.ndarray]:
    """Each item embedded in a batch of its own: no padding at all."""

    async def go() -> list[np.ndarray]:
        return [(await runtime.predict([item]))[0].vector for item in items]  # type: ignore[union-attr]

    return asyncio.run(go())


def served(
    runtime: HFEmbeddingRuntime, *, grouped: bool
) -> tuple[list[Embedding], list[list[EmbeddingInput]], list[BatchContext]]:
    """Every item of MIXED submitted by its own caller at once, as the server batches them."""
    batches: list[list[EmbeddingInput]] = []
    contexts: list[BatchContext] = []

    async def handler(items: list[EmbeddingInput], context: BatchContext) -> Any:
        batches.append(items)
        contexts.append(context)
        return await runtime.predict_with_threads(items, context.threads)

    async def go() -> list[Embedding]:
        batcher: AdaptiveBatcher[EmbeddingInput, Embedding] = AdaptiveBatcher(
            handler,
            max_batch_size=4,
            max_concurrent_batches=2,
            cores=2,
            length=runtime.length_key() if grouped else None,
        )
        try:
            return list(await asyncio.gather(*(batcher.submit(item) for item in MIXED)))
        finally:
            await batcher.close()

    return asyncio.run(go()), batches, contexts


def padded_tokens(runtime: HFEmbeddingRuntime, batches: list[list[EmbeddingInput]]) -> int:
    def tokens(item: EmbeddingInput) -> int:
        return len(item) if isinstance(item, list) else runtime.count_tokens(item)

    return sum(len(b) * max(map(tokens, b)) - sum(map(tokens, b)) for b in batches)


def test_length_grouping_gives_the_same_vectors_as_arrival_order(
    runtime: HFEmbeddingRuntime,
) -> None:
    grouped, grouped_batches, _ = served(runtime, grouped=True)
    fifo, fifo_batches, _ = served(runtime, grouped=False)
    assert grouped_batches != fifo_batches  # the backlog really was regrouped
    assert padded_tokens(runtime, grouped_batches) < padded_tokens(runtime, fifo_batches) / 2
    for a, b in zip(grouped, fifo, strict=True):
        np.testing.assert_allclose(a.vector, b.vector, atol=1e-5)
        assert a.tokens == b.tokens


def test_each_caller_gets_the_embedding_of_its_own_input(runtime: HFEmbeddingRuntime) -> None:
    results, _, contexts = served(runtime, grouped=True)
    assert max(c.in_flight for c in contexts) == 2  # two batches computed side by side
    for result, reference, item in zip(results, alone(runtime, MIXED), MIXED, strict=True):
        np.testing.assert_allclose(result.vector, reference, atol=1e-5)
        expected = len(item) if isinstance(item, list) else runtime.count_tokens(item)
        assert result.tokens == expected


def test_a_thread_budget_holds_for_its_forward_only(runtime: HFEmbeddingRuntime) -> None:
    import torch

    during: list[int] = []
    hook = runtime._model.register_forward_pre_hook(
        lambda *_: during.append(torch.get_num_threads())
    )

    async def go() -> tuple[list[Any], list[Any], int, int]:
        default = list(await runtime.predict(MIXED))
        before = await runtime.run(torch.get_num_threads)
        budgeted = list(await runtime.predict_with_threads(MIXED, before + 1))
        return default, budgeted, before, await runtime.run(torch.get_num_threads)

    shared = runtime.context
    with ThreadPoolExecutor(1) as one:  # the same compute thread before, during and after
        runtime.context = RuntimeContext(shared.model_dir, shared.version, one)
        try:
            default, budgeted, before, after = asyncio.run(go())
        finally:
            runtime.context = shared
            hook.remove()
    assert during == [before, before + 1]
    assert after == before
    for a, b in zip(default, budgeted, strict=True):
        np.testing.assert_allclose(a.vector, b.vector, atol=1e-5)


def test_the_length_key_estimates_tokens_within_the_model_limit(
    runtime: HFEmbeddingRuntime,
) -> None:
    length = runtime.length_key()
    assert length([101, 102]) == 2
    assert length("hi") < length(LONG[0])
    # As long as truncation makes it, and no longer.
    assert length("word " * 5000) == runtime.count_tokens("word " * 5000)
