"""GenerationEngine: continuous batching, sampling, streaming and cancellation for one model.

Callers speak the plain-data interface of ``serving.generation_types``:
``prepare`` a ``GenerationRequest`` (template, tokenize, check the budget and
the queue), then ``generate`` its ``n`` completions as ``Chunk``s. This base
class owns everything that does not depend on the model's engine: the queue
and its 429, the metrics (TTFT, ITL, tokens, running and waiting sequences, KV
use), text out through ``detokenize`` (whole UTF-8 characters only, stop
strings cut and never sent) and cancellation when a caller goes away. A
subclass only turns prompt ids into steps of new token ids:

* ``generation_hf.HFGenerationEngine``: Hugging Face models (format ``hf``),
  transformers' continuous-batching manager;
* ``generation_llama.LlamaGenerationEngine``: GGUF models (format ``gguf``),
  a llama.cpp decode loop of our own that batches every running sequence.

``create_engine`` picks the one that fits a runtime.
"""

from __future__ import annotations

import asyncio
import functools
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Executor
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any

import anyio.to_thread

from maas.errors import RateLimitedError, UnavailableError
from maas.runtimes.base import Runtime
from maas.runtimes.text_generation import TextGenerationRuntime
from maas.serving.chat_prompt import encode_conversation
from maas.serving.detokenize import IncrementalDecoder, StopMatcher
from maas.serving.generation_types import (
    Chunk,
    GenerationEvent,
    GenerationRequest,
    Message,
    Prepared,
    SamplingParams,
    TokenLogprob,
    Tool,
)
from maas.serving.llama_sampling import check_params
from maas.serving.metrics import ServingMetrics
from maas.serving.structured import OutputGrammar, request_grammar

__all__ = [
    "Chunk",
    "GenerationEngine",
    "GenerationEvent",
    "GenerationRequest",
    "IncrementalDecoder",
    "Message",
    "Prepared",
    "SamplingParams",
    "SequenceStats",
    "Step",
    "StopMatcher",
    "TokenLogprob",
    "Tool",
    "create_engine",
]

# Prompts longer than this (characters) are templated and tokenized on a worker thread.
_ENCODE_ON_LOOP_CHARS = 4096

# What an engine's step source yields: new token ids, their log-probabilities (when
# asked for), and "stop" / "length" with the last step.
Step = tuple[list[int], list[TokenLogprob], str | None]


@dataclass(slots=True)
class SequenceStats:
    """What an engine learns about one sequence as it runs, read when it ends."""

    cached_tokens: int = 0  # leading prompt tokens served from a prefix cache


@dataclass(frozen=True, slots=True)
class EngineLimits:
    """How much one model's engine takes on at once (the settings of the same names)."""

    max_running: int  # sequences in the running batch (MAAS_MAX_RUNNING_SEQUENCES)
    max_queued: int  # waiting for a place in it, beyond which 429 (MAAS_MAX_QUEUED_REQUESTS)
    kv_cache_tokens: int  # KV cache cells, all sequences together (MAAS_KV_CACHE_TOKENS)


class GenerationEngine(ABC):
    """Generation for one loaded text-generation model: ``prepare``, then ``generate``."""

    def __init__(
        self,
        runtime: TextGenerationRuntime,
        *,
        metrics: ServingMetrics,
        model_label: str,
        executor: Executor,
        limits: EngineLimits,
    ) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self.label = model_label
        self.executor = executor
        self.max_running = limits.max_running
        self.max_queued = limits.max_queued
        self.kv_cache_tokens = limits.kv_cache_tokens
        self.inflight = 0
        self.running = 0
        self._closed = False

    # ------------------------------------------------------------ engine hooks

    @abstractmethod
    def _steps(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        max_tokens: int,
        stats: SequenceStats | None = None,
    ) -> AsyncGenerator[Step, None]:
        """New tokens of one sequence as they come; closing the generator frees its slot.

        ``stats``, when given, is filled in as the engine learns about the sequence.
        """

    def kv_cache_usage(self) -> float:
        """Share of the KV cache in use, 0..1 (0 when the engine cannot tell)."""
        return 0.0

    async def close(self) -> None:
        """Stop taking requests and release what the engine holds."""
        self._closed = True

    def check_request(self, request: GenerationRequest) -> None:
        """Refuse, with a 400 naming the field, what this engine cannot honour (default: none)."""
        return None

    # ------------------------------------------------------------ requests

    async def prepare(self, request: GenerationRequest) -> tuple[list[int], SamplingParams]:
        """The prompt's token ids and the request's sampling with ``max_tokens`` resolved.

        Raises every refusal a request can get before it generates: a feature the
        engine lacks, no chat template, an empty prompt, a schema that makes no
        grammar, a prompt and budget past the context length, no room in the
        queue for its ``n`` sequences, an unloading model.
        """
        self._check_open()
        self.check_request(request)
        runtime = self.runtime
        if request.messages:
            encode: Callable[[], list[int]] = functools.partial(
                encode_conversation, runtime, request
            )
        else:
            encode = functools.partial(runtime.encode_text, request.prompt or "")

        def build() -> tuple[list[int], OutputGrammar | None]:
            return encode(), request_grammar(request)

        size = sum(len(t) for t in request.texts()) + len(request.json_schema or "")
        size += sum(len(t.parameters) + len(t.description) for t in request.tools)
        prompt_ids, grammar = (
            build() if size < _ENCODE_ON_LOOP_CHARS else await anyio.to_thread.run_sync(build)
        )
        max_tokens = runtime.completion_budget(
            len(prompt_ids),
            request.params.max_tokens,
            prompt_param="messages" if request.messages else "prompt",
        )
        params = replace(
            request.params,
            max_tokens=max_tokens,
            grammar=grammar.text if grammar is not None else None,
            grammar_trigger=grammar.trigger if grammar is not None else None,
        )
        grammar_param = "response_format" if request.response_format != "text" else "tools"
        check_params(runtime, params, grammar_param=grammar_param)
        self._check_room(request.n)
        return prompt_ids, params

    async def generate(
        self, prompt_ids: list[int], params: SamplingParams, n: int = 1
    ) -> AsyncGenerator[Chunk, None]:
        """``n`` completions of one prompt, side by side, their chunks as they come.

        Each chunk's ``index`` says which sequence it belongs to. A sequence that
        fails ends the whole stream with its error. Closing the iterator cancels
        every sequence still running (their slots in the batch are freed).
        """
        if n == 1:
            async with aclosing(self.stream(prompt_ids, params)) as chunks:
                async for chunk in chunks:
                    yield chunk
            return
        queue: asyncio.Queue[Chunk | Exception | None] = asyncio.Queue()

        async def pump(index: int) -> None:
            try:
                async with aclosing(self.stream(prompt_ids, params, index=index)) as chunks:
                    async for chunk in chunks:
                        queue.put_nowait(chunk)
            except Exception as exc:  # handed to the consumer, which raises it
                queue.put_nowait(exc)
            finally:
                queue.put_nowait(None)

        tasks = [asyncio.create_task(pump(i)) for i in range(n)]
        try:
            open_streams = n
            while open_streams:
                item = await queue.get()
                if item is None:
                    open_streams -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    yield item
        finally:
            # Cancelling is synchronous, so the sequences stop even if this await is
            # itself cancelled (a client that went away).
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _check_open(self) -> None:
        if self._closed:
            raise UnavailableError(f"model {self.label} is unloading; retry")

    def _check_room(self, sequences: int) -> None:
        if self.inflight + sequences > self.max_running + self.max_queued:
            raise RateLimitedError(
                f"model {self.label} has {self.inflight} requests in flight, the most it queues "
                "(MAAS_MAX_QUEUED_REQUESTS); retry shortly",
                retry_after=1,
            )

    async def stream(
        self, prompt_ids: list[int], params: SamplingParams, *, index: int = 0
    ) -> AsyncGenerator[Chunk, None]:
        """Generate one completion, chunk by chunk; closing the iterator cancels it."""
        self._check_open()
        max_tokens = self.runtime.completion_budget(len(prompt_ids), params.max_tokens)
        self._check_room(1)
        self.inflight += 1
        self._gauges()
        decoder = IncrementalDecoder(self.runtime.tokenizer)
        matcher = StopMatcher(params.stop)
        started = time.perf_counter()
        last = started
        produced = 0
        first = True
        pending: list[TokenLogprob] = []  # logprobs of tokens whose text is not out yet
        # aclosing: closing this stream (a stop string, a caller gone) frees the slot at once.
        stats = SequenceStats()
        steps = self._steps(prompt_ids, params, max_tokens, stats)
        try:
            async for new_ids, logprobs, finished in steps:
                now = time.perf_counter()
                if new_ids:
                    if first:
                        self.metrics.ttft_seconds.labels(self.label).observe(now - started)
                        self.running += 1
                        self._gauges()
                        first = False
                    else:
                        self.metrics.itl_seconds.labels(self.label).observe(
                            (now - last) / len(new_ids)
                        )
                    last = now
                    produced += len(new_ids)
                    self.metrics.tokens_generated.labels(self.label).inc(len(new_ids))
                text = matcher.feed(decoder.push(new_ids)) if new_ids else ""
                pending.extend(logprobs)
                cached = stats.cached_tokens
                if matcher.stopped:
                    yield Chunk(text, "stop", produced, tuple(pending), index, cached)
                    return
                if finished is not None:
                    text += matcher.feed(decoder.flush())
                    if matcher.stopped:
                        yield Chunk(text, "stop", produced, tuple(pending), index, cached)
                        return
                    text += matcher.flush()
                    yield Chunk(text, finished, produced, tuple(pending), index, cached)
                    return
                if text:
                    yield Chunk(text, None, produced, tuple(pending), index)
                    pending = []
        finally:
            try:
                await steps.aclose()
            finally:  # counted even when the close is itself cancelled
                self.inflight -= 1
                if not first:
                    self.running -= 1
                self._gauges()

    def _gauges(self) -> None:
        self.metrics.gen_running.labels(self.label).set(self.running)
        self.metrics.gen_waiting.labels(self.label).set(self.inflight - self.running)
        self.metrics.kv_cache_usage.labels(self.label).set(self.kv_cache_usage())


def create_engine(
    runtime: Runtime,
    *,
    metrics: ServingMetrics,
    model_label: str,
    executor: Executor,
    limits: EngineLimits,
) -> GenerationEngine:
    """The generation engine that serves ``runtime`` (llama.cpp for GGUF, else transformers)."""
    from maas.runtimes.llama_cpp import LlamaCppTextGenerationRuntime
    from maas.runtimes.text_generation import HFTextGenerationRuntime

    settings: dict[str, Any] = {
        "metrics": metrics,
        "model_label": model_label,
        "executor": executor,
        "limits": limits,
    }
    if isinstance(runtime, LlamaCppTextGenerationRuntime):
        from maas.serving.generation_llama import LlamaGenerationEngine

        return LlamaGenerationEngine(runtime, **settings)
    if isinstance(runtime, HFTextGenerationRuntime):
        from maas.serving.generation_hf import HFGenerationEngine

        return HFGenerationEngine(runtime, **settings)
    raise TypeError(f"{type(runtime).__name__} is not a text-generation runtime")
