"""GenerationEngine: continuous batching, sampling, streaming and cancellation for one model.

A generation is asked for in plain data (``GenerationRequest``) and answered
as a stream of plain data (``Prepared``, then ``Chunk``s), so that the same
calls work in this process (``LocalHost``) and across a process boundary
(the engine process's ``RemoteHost``): no callbacks, runtimes or futures
cross it.

Two paths, picked per request:

* **Batched** (the default): transformers' continuous-batching manager, which
  admits new sequences into the running batch at every step (paged KV cache),
  in a background thread of its own. One manager runs greedy requests
  (``temperature`` 0) and another runs sampled ones, with ``temperature``,
  ``top_p`` and ``top_k`` applied per request. Tokens come back to the event
  loop through ``register_result_handler`` (``call_soon_threadsafe``).
* **Exact** (``seed`` or ``top_logprobs`` given): a plain KV-cache step loop on
  the compute executor with a private ``torch.Generator``. A shared batch draws
  from one random stream, so "same seed, same output" can only be kept outside
  it; the step loop also returns the top alternatives' log-probabilities.

Why transformers' manager rather than a step loop of our own for the batched
path: measured here it reaches several times serial ``generate`` at 32 streams,
and its greedy output is token-for-token what ``generate`` gives (tested).

Text leaves through ``detokenize``: whole UTF-8 characters only, stop strings
cut and never sent.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import threading
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Executor
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any

import anyio.to_thread

from maas.errors import RateLimitedError, UnavailableError
from maas.runtimes.base import Runtime
from maas.runtimes.text_generation import HFTextGenerationRuntime
from maas.serving.detokenize import IncrementalDecoder, StopMatcher
from maas.serving.metrics import ServingMetrics

log = logging.getLogger(__name__)

_ids = itertools.count()

# Prompts longer than this (characters) are templated and tokenized on a worker thread.
_ENCODE_ON_LOOP_CHARS = 4096

# The dataclasses below are the generation interface of ``ModelHost``: plain values
# only. msgpack brings tuples back as lists, so the tuple fields are made tuples again.


@dataclass(frozen=True, slots=True)
class SamplingParams:
    # None: what the context leaves after the prompt, at most DEFAULT_MAX_TOKENS.
    max_tokens: int | None = None
    temperature: float = 1.0  # 0 = greedy (deterministic)
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = None  # None = no alternatives; needs the exact path

    def __post_init__(self) -> None:
        if not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def exact_path(self) -> bool:
        return self.top_logprobs is not None or (self.seed is not None and self.temperature > 0)


@dataclass(frozen=True, slots=True)
class Message:
    """One turn of a conversation, as the chat template reads it."""

    role: str  # system | developer | user | assistant
    content: str


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What to generate from: a conversation (chat template) or a plain prompt, ``n`` times."""

    messages: tuple[Message, ...] = ()
    prompt: str | None = None
    params: SamplingParams = SamplingParams()
    n: int = 1  # completions of the same prompt, generated side by side in the running batch

    def __post_init__(self) -> None:
        if not isinstance(self.messages, tuple):
            object.__setattr__(self, "messages", tuple(self.messages))
        if bool(self.messages) == (self.prompt is not None):
            raise ValueError("a generation request has either messages or a prompt")
        if self.n < 1:
            raise ValueError("n must be at least 1")

    def texts(self) -> list[str]:
        """The caller's texts, in order (what PII screening reads and rewrites)."""
        return [m.content for m in self.messages] if self.messages else [self.prompt or ""]

    def with_texts(self, texts: list[str]) -> GenerationRequest:
        """The same request over rewritten texts (``texts()`` order)."""
        if self.messages:
            messages = tuple(Message(m.role, t) for m, t in zip(self.messages, texts, strict=True))
            return replace(self, messages=messages)
        (prompt,) = texts
        return replace(self, prompt=prompt)


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()  # the most likely tokens at this step, best first

    def __post_init__(self) -> None:
        if not isinstance(self.top, tuple):
            object.__setattr__(self, "top", tuple((t, lp) for t, lp in self.top))


@dataclass(frozen=True, slots=True)
class Prepared:
    """The first event of every generation: the prompt is encoded and fits.

    Nothing is generating yet when it arrives; a consumer that closes the stream
    here (a refused token budget) leaves nothing running.
    """

    prompt_tokens: int
    max_tokens: int  # per sequence, resolved for this prompt


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of one completion: new text, and at the end why it stopped."""

    text: str
    finish_reason: str | None = None  # "stop" | "length" on the last chunk
    completion_tokens: int = 0  # of this sequence, so far
    logprobs: tuple[TokenLogprob, ...] = ()
    index: int = 0  # which of the request's n sequences

    def __post_init__(self) -> None:
        if not isinstance(self.logprobs, tuple):
            object.__setattr__(self, "logprobs", tuple(self.logprobs))


GenerationEvent = Prepared | Chunk


class GenerationEngine:
    """Generation for one loaded text-generation model: ``prepare``, then ``generate``."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        metrics: ServingMetrics,
        model_label: str,
        executor: Executor,
        max_running: int,
        max_queued: int,
        kv_cache_tokens: int,
    ) -> None:
        if not isinstance(runtime, HFTextGenerationRuntime):
            raise TypeError(f"{type(runtime).__name__} is not a text-generation runtime")
        self.runtime: HFTextGenerationRuntime = runtime
        self.metrics = metrics
        self.label = model_label
        self.executor = executor
        self.max_running = max_running
        self.max_queued = max_queued
        self.kv_cache_tokens = kv_cache_tokens
        self._managers: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.inflight = 0
        self.running = 0
        self._closed = False

    # ------------------------------------------------------------ lifecycle

    def _manager(self, kind: str) -> Any:
        """The greedy or sampling continuous-batching manager, started on first use."""
        with self._lock:
            manager = self._managers.get(kind)
            if manager is not None:
                return manager
            from transformers import ContinuousBatchingConfig, GenerationConfig

            model = self.runtime.model
            sampling = kind == "sample"
            generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
                do_sample=sampling,
                # Per-request values override these; they must differ from the
                # neutral ones for the processors to exist at all.
                temperature=0.7 if sampling else None,
                top_p=0.95 if sampling else None,
                top_k=50 if sampling else None,
                max_new_tokens=256,
                eos_token_id=self.runtime.eos_token_ids or None,
                pad_token_id=self.runtime.pad_token_id,
            )
            page = 256
            cb_config = ContinuousBatchingConfig(
                page_size=page,
                num_blocks=max(4, -(-self.kv_cache_tokens // page)),
                max_batch_tokens=max(256, self.max_running * 16),
                max_requests_per_batch=self.max_running,
                # Per-request sampling values only where they are used: the processors
                # cost about 3x decode throughput on CPU (measured), so greedy runs without.
                per_request_processors=sampling,
            )
            manager = model.init_continuous_batching(
                generation_config=generation_config, continuous_batching_config=cb_config
            )
            # The decode loop runs one batch step at a time and should use every core
            # (measured 1.3x tokens/s over one thread on 2 cores). torch's thread count
            # is per thread, taken lazily from the last value set anywhere, so it is set
            # here and not restored: the loop thread reads it at its first step.
            import torch

            torch.set_num_threads(len(os.sched_getaffinity(0)))
            manager.start()
            self._managers[kind] = manager
            return manager

    async def close(self) -> None:
        self._closed = True
        managers, self._managers = list(self._managers.values()), {}
        for manager in managers:
            stop = functools.partial(manager.stop, block=True, timeout=10)
            await asyncio.get_running_loop().run_in_executor(None, stop)

    # ------------------------------------------------------------ requests

    async def prepare(self, request: GenerationRequest) -> tuple[list[int], SamplingParams]:
        """The prompt's token ids and the request's sampling with ``max_tokens`` resolved.

        Raises every refusal a request can get before it generates: no chat
        template, an empty prompt, a prompt and budget past the context length,
        no room in the queue for its ``n`` sequences, an unloading model.
        """
        self._check_open()
        runtime = self.runtime
        if request.messages:
            turns = [{"role": m.role, "content": m.content} for m in request.messages]
            encode: Callable[[], list[int]] = functools.partial(runtime.encode_chat, turns)
        else:
            encode = functools.partial(runtime.encode_text, request.prompt or "")
        if sum(len(t) for t in request.texts()) < _ENCODE_ON_LOOP_CHARS:
            prompt_ids = encode()
        else:
            prompt_ids = await anyio.to_thread.run_sync(encode)
        max_tokens = runtime.completion_budget(
            len(prompt_ids),
            request.params.max_tokens,
            prompt_param="messages" if request.messages else "prompt",
        )
        self._check_room(request.n)
        return prompt_ids, replace(request.params, max_tokens=max_tokens)

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
        source = self._exact if params.exact_path else self._batched
        decoder = IncrementalDecoder(self.runtime.tokenizer)
        matcher = StopMatcher(params.stop)
        started = time.perf_counter()
        last = started
        produced = 0
        first = True
        pending: list[TokenLogprob] = []  # logprobs of tokens whose text is not out yet
        # aclosing: closing this stream (a stop string, a caller gone) frees the slot at once.
        steps = source(prompt_ids, params, max_tokens)
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
                if matcher.stopped:
                    yield Chunk(text, "stop", produced, tuple(pending), index)
                    return
                if finished is not None:
                    text += matcher.feed(decoder.flush())
                    if matcher.stopped:
                        yield Chunk(text, "stop", produced, tuple(pending), index)
                        return
                    yield Chunk(text + matcher.flush(), finished, produced, tuple(pending), index)
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
        used = 0.0
        for manager in list(self._managers.values()):
            cache = getattr(getattr(manager, "batch_processor", None), "cache", None)
            free = getattr(cache, "get_num_free_blocks", None)
            total = getattr(cache, "num_blocks", None)
            if callable(free) and isinstance(total, int) and total:
                used = max(used, 1 - free() / total)
        self.metrics.kv_cache_usage.labels(self.label).set(used)

    # ------------------------------------------------------------ batched path

    async def _batched(
        self, prompt_ids: list[int], params: SamplingParams, max_tokens: int
    ) -> AsyncGenerator[tuple[list[int], list[TokenLogprob], str | None], None]:
        greedy = params.temperature == 0
        loop = asyncio.get_running_loop()
        kind = "greedy" if greedy else "sample"
        # Started once, on a thread (creating a manager allocates its KV cache); after
        # that, requests take it without a thread hop.
        manager: Any = self._managers.get(kind)
        if manager is None:
            manager = await loop.run_in_executor(None, self._manager, kind)
        request_id = f"maas-{next(_ids)}"
        outputs: asyncio.Queue[Any] = asyncio.Queue()
        manager.register_result_handler(request_id, outputs.put_nowait)
        kwargs: dict[str, Any] = {}
        if not greedy:
            vocab = int(self.runtime.model.config.vocab_size)
            kwargs = {
                "temperature": float(params.temperature),
                "top_p": float(params.top_p),
                "top_k": int(params.top_k) if params.top_k > 0 else vocab,  # vocab = no top-k
            }
        manager.add_request(
            list(prompt_ids),
            request_id=request_id,
            max_new_tokens=max_tokens,
            streaming=True,
            eos_token_id=self.runtime.eos_token_ids or None,
            **kwargs,
        )
        seen = 0
        done = False
        try:
            while True:
                result = await outputs.get()
                if result.error:
                    raise UnavailableError(f"generation failed: {result.error}")
                tokens = list(result.generated_tokens)
                new, seen = tokens[seen:], len(tokens)
                logprobs = [
                    TokenLogprob(self.runtime.tokenizer.decode([t]), float(lp))
                    for t, lp in zip(
                        new, list(result.logprobs)[-len(new) :] if new else [], strict=False
                    )
                ]
                finished: str | None = None
                if result.is_finished():
                    done = True
                    ended_on_eos = bool(tokens) and tokens[-1] in self.runtime.eos_token_ids
                    finished = "stop" if ended_on_eos or len(tokens) < max_tokens else "length"
                yield new, logprobs, finished
                if finished is not None:
                    return
        finally:
            if not done:  # the caller went away or hit a stop string: free the slot now
                manager.cancel_request(request_id)

    # ------------------------------------------------------------ exact path

    async def _exact(
        self, prompt_ids: list[int], params: SamplingParams, max_tokens: int
    ) -> AsyncGenerator[tuple[list[int], list[TokenLogprob], str | None], None]:
        loop = asyncio.get_running_loop()
        outputs: asyncio.Queue[tuple[list[int], list[TokenLogprob], str | None] | BaseException] = (
            asyncio.Queue()
        )
        cancel = threading.Event()

        def emit(item: tuple[list[int], list[TokenLogprob], str | None] | BaseException) -> None:
            loop.call_soon_threadsafe(outputs.put_nowait, item)

        work = loop.run_in_executor(
            self.executor, _step_loop, self.runtime, prompt_ids, params, max_tokens, emit, cancel
        )
        try:
            while True:
                item = await outputs.get()
                if isinstance(item, BaseException):
                    raise UnavailableError(f"generation failed: {item}") from item
                yield item
                if item[2] is not None:
                    return
        finally:
            cancel.set()
            await asyncio.wait([work])


def _step_loop(
    runtime: HFTextGenerationRuntime,
    prompt_ids: list[int],
    params: SamplingParams,
    max_tokens: int,
    emit: Callable[[Any], None],
    cancel: threading.Event,
) -> None:
    """One sequence, one token per forward, a private random generator (thread)."""
    import torch

    try:
        generator = torch.Generator().manual_seed(params.seed if params.seed is not None else 0)
        if params.seed is None:
            generator.seed()
        tokenizer = runtime.tokenizer
        eos = set(runtime.eos_token_ids)
        ids = torch.tensor([prompt_ids], dtype=torch.long)  # (1, prompt)
        past: Any = None
        with torch.inference_mode():
            for step in range(max_tokens):
                if cancel.is_set():
                    return
                # logits_to_keep=1: only the last position's logits (vocab-sized rows are
                # the biggest activation of a small model's prefill).
                out = runtime.model(input_ids=ids, cache=past, use_cache=True, logits_to_keep=1)
                past = out.cache
                logits = out.logits[0, -1].float()  # (vocab,)
                logp = torch.log_softmax(logits, dim=-1)
                if params.temperature == 0:
                    token = int(torch.argmax(logits))
                else:
                    scaled = logits / params.temperature
                    if params.top_k > 0:
                        kth = torch.topk(scaled, min(params.top_k, scaled.numel())).values[-1]
                        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
                    probs = torch.softmax(scaled, dim=-1)
                    if params.top_p < 1.0:
                        sorted_probs, order = torch.sort(probs, descending=True)
                        keep = torch.cumsum(sorted_probs, dim=0) - sorted_probs < params.top_p
                        mask = torch.zeros_like(probs, dtype=torch.bool)
                        mask[order[keep]] = True
                        probs = torch.where(mask, probs, torch.zeros_like(probs))
                        probs = probs / probs.sum()
                    token = int(torch.multinomial(probs, 1, generator=generator))
                top: tuple[tuple[str, float], ...] = ()
                if params.top_logprobs:
                    values, indices = torch.topk(logp, params.top_logprobs)
                    top = tuple(
                        (tokenizer.decode([int(i)]), float(v))
                        for v, i in zip(values, indices, strict=True)
                    )
                entry = TokenLogprob(tokenizer.decode([token]), float(logp[token]), top)
                finished: str | None = None
                if token in eos:
                    finished = "stop"
                elif step == max_tokens - 1:
                    finished = "length"
                emit(([token], [entry], finished))
                if finished is not None:
                    return
                ids = torch.tensor([[token]], dtype=torch.long)  # (1, 1)
    except BaseException as exc:
        emit(exc)
