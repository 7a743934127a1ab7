"""HF text-classification runtime under the batcher: length grouping and thread budgets."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from maas.runtimes.base import RuntimeContext
from maas.runtimes.text_classification import Classification, HFTextClassificationRuntime
from maas.serving.batching import AdaptiveBatcher, BatchContext
from tests.runtimes.test_embeddings import LONG, SHORT, version_info

TEXTS = [text for pair in zip(SHORT, LONG * 2, strict=True) for text in pair]


@pytest.fixture(scope="module")
def runtime(
    minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HFTextClassificationRuntime]:
    import torch
    from transformers import AutoModelForSequenceClassification

    root = tmp_path_factory.mktemp("classifier")
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the head is random: seeded, so every run sees the same model
        model = AutoModelForSequenceClassification.from_pretrained(
            minilm_dir, num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"}
        )
    model.save_pretrained(root)
    for f in minilm_dir.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special_tokens")):
            shutil.copy(f, root / f.name)
    with ThreadPoolExecutor(2) as pool:
        loaded = HFTextClassificationRuntime(
            RuntimeContext(model_dir=root, version=version_info(root), executor=pool)
        )
        asyncio.run(loaded.load())
        yield loaded


def classify(runtime: HFTextClassificationRuntime, *, grouped: bool) -> list[Classification]:
    async def handler(items: list[str], context: BatchContext) -> Any:
        return await runtime.predict_with_threads(items, context.threads)

    async def go() -> list[Classification]:
        batcher: AdaptiveBatcher[str, Classification] = AdaptiveBatcher(
            handler,
            max_batch_size=4,
            max_concurrent_batches=2,
            cores=2,
            length=runtime.length_key() if grouped else None,
        )
        try:
            return list(await asyncio.gather(*(batcher.submit(text) for text in TEXTS)))
        finally:
            await batcher.close()

    return asyncio.run(go())


def probabilities(result: Classification) -> list[float]:
    return [p for _, p in sorted(result.labels)]


def test_length_grouping_gives_each_caller_the_scores_of_its_own_text(
    runtime: HFTextClassificationRuntime,
) -> None:
    async def one_by_one() -> list[Classification]:
        return [(await runtime.predict([text]))[0] for text in TEXTS]

    alone = asyncio.run(one_by_one())
    grouped = classify(runtime, grouped=True)
    fifo = classify(runtime, grouped=False)
    for a, b, c in zip(grouped, fifo, alone, strict=True):
        np.testing.assert_allclose(probabilities(a), probabilities(c), atol=1e-5)
        np.testing.assert_allclose(probabilities(b), probabilities(c), atol=1e-5)
        assert a.tokens == c.tokens


def test_a_thread_budget_changes_threads_not_scores(runtime: HFTextClassificationRuntime) -> None:
    async def go() -> tuple[list[Classification], list[Classification]]:
        default = list(await runtime.predict(TEXTS))
        return default, list(await runtime.predict_with_threads(TEXTS, 3))

    default, budgeted = asyncio.run(go())
    for a, b in zip(default, budgeted, strict=True):
        np.testing.assert_allclose(probabilities(a), probabilities(b), atol=1e-5)
