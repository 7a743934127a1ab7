"""The generation engine of GGUF models: llama.cpp with continuous batching of our own.

Every sequence of the model runs in one decode loop (``generation_llama_loop``)
that batches them all into each ``llama_decode`` and admits new ones at every
step; this side only hands a sequence to the loop and turns what the loop
delivers into the engine's steps. Sampling is per sequence inside the loop, so
seeded requests and log-probabilities need no separate path: every request,
greedy or sampled, seeded or not, shares the running batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from concurrent.futures import Executor
from dataclasses import replace

from maas.errors import UnavailableError
from maas.runtimes.llama_cpp import LlamaCppTextGenerationRuntime
from maas.serving.generation import EngineLimits, GenerationEngine, SequenceStats, Step
from maas.serving.generation_llama_loop import DecodeLoop, Delivery, Sequence
from maas.serving.generation_types import SamplingParams
from maas.serving.metrics import ServingMetrics


class LlamaGenerationEngine(GenerationEngine):
    """Continuous batching on llama.cpp: one decode loop thread per loaded model."""

    def __init__(
        self,
        runtime: LlamaCppTextGenerationRuntime,
        *,
        metrics: ServingMetrics,
        model_label: str,
        executor: Executor,
        limits: EngineLimits,
    ) -> None:
        # The runtime's context was sized for the sequences it may hold.
        running = min(limits.max_running, runtime.max_sequences)
        super().__init__(
            runtime,
            metrics=metrics,
            model_label=model_label,
            executor=executor,
            limits=replace(limits, max_running=running),
        )
        self.llama = runtime
        self._loop: DecodeLoop | None = None

    def _decode_loop(self) -> DecodeLoop:
        # Started on first use; started again if it died (its sequences got the error).
        if self._loop is None or not self._loop.alive:
            self._check_open()
            self._loop = DecodeLoop(
                self.llama, asyncio.get_running_loop(), self.label, on_release=self._gauges
            )
        return self._loop

    def kv_cache_usage(self) -> float:
        return self._loop.cache_usage() if self._loop is not None else 0.0

    def _gauges(self) -> None:
        super()._gauges()
        if self._loop is not None:  # an int the loop thread writes: read as it stands
            self.metrics.llama_threads.labels(self.label).set(self._loop.threads.current)

    async def close(self) -> None:
        await super().close()
        decode_loop, self._loop = self._loop, None
        if decode_loop is not None:
            await asyncio.get_running_loop().run_in_executor(None, decode_loop.close)

    def _count_prefix(self, sequence: Sequence) -> None:
        metrics, label = self.metrics, self.label
        metrics.prefix_queries.labels(label).inc()
        metrics.prefix_prompt_tokens.labels(label).inc(len(sequence.prompt))
        if sequence.cached:
            metrics.prefix_hits.labels(label).inc()
            metrics.prefix_cached_tokens.labels(label).inc(sequence.cached)

    async def _steps(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        max_tokens: int,
        stats: SequenceStats | None = None,
    ) -> AsyncGenerator[Step, None]:
        decode_loop = self._decode_loop()
        deliveries: asyncio.Queue[Delivery] = asyncio.Queue()
        sequence = Sequence(list(prompt_ids), max_tokens, params, deliveries.put_nowait)
        decode_loop.submit(sequence)
        done = first = False
        try:
            while True:
                item = await deliveries.get()
                if not first:  # admitted: the loop has looked the prompt up
                    first = True
                    self._count_prefix(sequence)
                    if stats is not None:
                        stats.cached_tokens = sequence.cached
                if isinstance(item, BaseException):
                    done = True
                    raise UnavailableError(f"generation failed: {item}") from item
                if item[2] is not None:
                    done = True
                yield item
                if done:
                    return
        finally:
            if not done:  # the caller went away or hit a stop string: free the slot now
                decode_loop.cancel(sequence)
