"""GenerationEngine: continuous batching, sampling, streaming and cancellation for one model.

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

Text is detokenized incrementally and only released once it is valid UTF-8
(a Chinese character split over byte tokens waits for its last byte); stop
strings are matched on the text, never sent, and text that could still turn
into a stop string is held back until it cannot.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from maas.errors import InvalidRequestError, RateLimitedError, UnavailableError
from maas.serving.metrics import ServingMetrics

log = logging.getLogger(__name__)

_ids = itertools.count()


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0 = greedy (deterministic)
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = None  # None = no alternatives; needs the exact path

    @property
    def exact_path(self) -> bool:
        return self.top_logprobs is not None or (self.seed is not None and self.temperature > 0)


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass(slots=True)
class Chunk:
    """A piece of one completion: new text, and at the end why it stopped."""

    text: str
    finish_reason: str | None = None  # "stop" | "length" on the last chunk
    completion_tokens: int = 0  # so far
    logprobs: list[TokenLogprob] = field(default_factory=list)


class StopMatcher:
    """Releases text as it arrives, cutting at the first stop string and never leaking one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.text = ""
        self.released = 0
        self.stopped = False

    def feed(self, delta: str) -> str:
        self.text += delta
        if not self.stops:
            out, self.released = self.text[self.released :], len(self.text)
            return out
        window = max(0, self.released - max(len(s) for s in self.stops))
        hits = [i for i in (self.text.find(s, window) for s in self.stops) if i >= 0]
        if hits:
            cut = min(hits)
            self.stopped = True
            out = self.text[self.released : max(cut, self.released)]
            self.released = max(cut, self.released)
            return out
        safe = len(self.text) - self._partial_suffix()
        out = self.text[self.released : max(safe, self.released)]
        self.released = max(safe, self.released)
        return out

    def flush(self) -> str:
        out, self.released = self.text[self.released :], len(self.text)
        return out if not self.stopped else ""

    def _partial_suffix(self) -> int:
        """Length of the longest end of the text that begins some stop string."""
        best = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.text)), best, -1):
                if self.text.endswith(stop[:size]):
                    best = size
                    break
        return best


class IncrementalDecoder:
    """Token ids in, complete UTF-8 text out."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""

    def push(self, new_ids: list[int]) -> str:
        self.ids.extend(new_ids)
        text: str = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""  # the last character's bytes are not all here yet
        if not text.startswith(self.emitted):  # a tokenizer re-spaced earlier text
            return ""
        delta, self.emitted = text[len(self.emitted) :], text
        return delta

    def flush(self) -> str:
        """What is left at the end, even bytes that never formed a character (as U+FFFD)."""
        text: str = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        delta = text[len(self.emitted) :] if text.startswith(self.emitted) else ""
        self.emitted = text
        return delta


class GenerationEngine:
    def __init__(
        self,
        runtime: Any,
        *,
        metrics: ServingMetrics,
        model_label: str,
        executor: Executor,
        max_running: int,
        max_queued: int,
        kv_cache_tokens: int,
    ) -> None:
        self.runtime = runtime
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

    def check_context(self, prompt_tokens: int, max_tokens: int) -> None:
        limit = self.runtime.context_length
        if prompt_tokens + max_tokens > limit:
            raise InvalidRequestError(
                f"this model's context length is {limit} tokens; the prompt has {prompt_tokens} "
                f"and max_tokens asks for {max_tokens} more ({prompt_tokens + max_tokens} in all)",
                param="max_tokens" if prompt_tokens < limit else "messages",
            )

    async def stream(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Chunk]:
        """Generate one completion, chunk by chunk; closing the iterator cancels it."""
        if self._closed:
            raise UnavailableError(f"model {self.label} is unloading; retry")
        self.check_context(len(prompt_ids), params.max_tokens)
        if self.inflight >= self.max_running + self.max_queued:
            raise RateLimitedError(
                f"model {self.label} has {self.inflight} requests in flight, the most it queues "
                "(MAAS_MAX_QUEUED_REQUESTS); retry shortly",
                retry_after=1,
            )
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
        try:
            async for new_ids, logprobs, finished in source(prompt_ids, params):
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
                    yield Chunk(text, "stop", produced, pending)
                    return
                if finished is not None:
                    text += matcher.feed(decoder.flush())
                    if matcher.stopped:
                        yield Chunk(text, "stop", produced, pending)
                        return
                    yield Chunk(text + matcher.flush(), finished, produced, pending)
                    return
                if text:
                    yield Chunk(text, None, produced, pending)
                    pending = []
        finally:
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
        self, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[tuple[list[int], list[TokenLogprob], str | None]]:
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
            max_new_tokens=params.max_tokens,
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
                    finished = (
                        "stop" if ended_on_eos or len(tokens) < params.max_tokens else "length"
                    )
                yield new, logprobs, finished
                if finished is not None:
                    return
        finally:
            if not done:  # the caller went away or hit a stop string: free the slot now
                manager.cancel_request(request_id)

    # ------------------------------------------------------------ exact path

    async def _exact(
        self, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[tuple[list[int], list[TokenLogprob], str | None]]:
        loop = asyncio.get_running_loop()
        outputs: asyncio.Queue[tuple[list[int], list[TokenLogprob], str | None] | BaseException] = (
            asyncio.Queue()
        )
        cancel = threading.Event()

        def emit(item: tuple[list[int], list[TokenLogprob], str | None] | BaseException) -> None:
            loop.call_soon_threadsafe(outputs.put_nowait, item)

        work = loop.run_in_executor(
            self.executor, _step_loop, self.runtime, prompt_ids, params, emit, cancel
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
    runtime: Any,
    prompt_ids: list[int],
    params: SamplingParams,
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
            for step in range(params.max_tokens):
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
                top: list[tuple[str, float]] = []
                if params.top_logprobs:
                    values, indices = torch.topk(logp, params.top_logprobs)
                    top = [
                        (tokenizer.decode([int(i)]), float(v))
                        for v, i in zip(values, indices, strict=True)
                    ]
                entry = TokenLogprob(tokenizer.decode([token]), float(logp[token]), top)
                finished: str | None = None
                if token in eos:
                    finished = "stop"
                elif step == params.max_tokens - 1:
                    finished = "length"
                emit(([token], [entry], finished))
                if finished is not None:
                    return
                ids = torch.tensor([[token]], dtype=torch.long)  # (1, 1)
    except BaseException as exc:
        emit(exc)
