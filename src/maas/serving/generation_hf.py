"""The generation engine of Hugging Face models: transformers' continuous batching.

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
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import threading
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Executor
from typing import Any

from maas.errors import InvalidRequestError, UnavailableError
from maas.runtimes.text_generation import HFTextGenerationRuntime
from maas.serving.generation import EngineLimits, GenerationEngine, SequenceStats, Step
from maas.serving.generation_types import GenerationRequest, SamplingParams, TokenLogprob
from maas.serving.metrics import ServingMetrics

_ids = itertools.count()


class HFGenerationEngine(GenerationEngine):
    """Continuous batching of a transformers model (greedy and sampling managers)."""

    def __init__(
        self,
        runtime: HFTextGenerationRuntime,
        *,
        metrics: ServingMetrics,
        model_label: str,
        executor: Executor,
        limits: EngineLimits,
    ) -> None:
        super().__init__(
            runtime, metrics=metrics, model_label=model_label, executor=executor, limits=limits
        )
        self.hf = runtime
        self._managers: dict[str, Any] = {}
        self._lock = threading.Lock()

    def check_request(self, request: GenerationRequest) -> None:
        """Refuse what only the llama.cpp engine honours, naming the first such field.

        transformers' continuous batching takes temperature, top-p and top-k per
        request and nothing else; penalties, biases, min-p and grammars would
        apply to every sequence of a manager or need a constrained-decoding
        library, so ``hf`` versions refuse them rather than ignore them.
        """
        params = request.params
        used = [
            ("presence_penalty", params.presence_penalty != 0),
            ("frequency_penalty", params.frequency_penalty != 0),
            ("repetition_penalty", params.repetition_penalty != 1.0),
            ("min_p", params.min_p != 0),
            ("logit_bias", bool(params.logit_bias)),
            ("response_format", request.response_format != "text"),
            ("tools", request.calls_tools),
        ]
        for name, given in used:
            if given:
                raise InvalidRequestError(
                    f"{name} is not supported for model {self.hf.version.ref} (format hf, "
                    "served by transformers); it needs a GGUF version of the model, served by "
                    "llama.cpp",
                    param=name,
                )

    def _steps(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        max_tokens: int,
        stats: SequenceStats | None = None,  # transformers' prefix sharing is not reported
    ) -> AsyncGenerator[Step, None]:
        source = self._exact if params.exact_path else self._batched
        return source(prompt_ids, params, max_tokens)

    def kv_cache_usage(self) -> float:
        used = 0.0
        for manager in list(self._managers.values()):
            cache = getattr(getattr(manager, "batch_processor", None), "cache", None)
            free = getattr(cache, "get_num_free_blocks", None)
            total = getattr(cache, "num_blocks", None)
            if callable(free) and isinstance(total, int) and total:
                used = max(used, 1 - free() / total)
        return used

    # ------------------------------------------------------------ lifecycle

    def _manager(self, kind: str) -> Any:
        """The greedy or sampling continuous-batching manager, started on first use."""
        with self._lock:
            manager = self._managers.get(kind)
            if manager is not None:
                return manager
            from transformers import ContinuousBatchingConfig, GenerationConfig

            model = self.hf.model
            sampling = kind == "sample"
            generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
                do_sample=sampling,
                # Per-request values override these; they must differ from the
                # neutral ones for the processors to exist at all.
                temperature=0.7 if sampling else None,
                top_p=0.95 if sampling else None,
                top_k=50 if sampling else None,
                max_new_tokens=256,
                eos_token_id=self.hf.eos_token_ids or None,
                pad_token_id=self.hf.pad_token_id,
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
        await super().close()
        managers, self._managers = list(self._managers.values()), {}
        for manager in managers:
            stop = functools.partial(manager.stop, block=True, timeout=10)
            await asyncio.get_running_loop().run_in_executor(None, stop)

    # ------------------------------------------------------------ batched path

    async def _batched(
        self, prompt_ids: list[int], params: SamplingParams, max_tokens: int
    ) -> AsyncGenerator[Step, None]:
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
            vocab = int(self.hf.model.config.vocab_size)
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
            eos_token_id=self.hf.eos_token_ids or None,
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
                    TokenLogprob(self.hf.tokenizer.decode([t]), float(lp))
                    for t, lp in zip(
                        new, list(result.logprobs)[-len(new) :] if new else [], strict=False
                    )
                ]
                finished: str | None = None
                if result.is_finished():
                    done = True
                    ended_on_eos = bool(tokens) and tokens[-1] in self.hf.eos_token_ids
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
    ) -> AsyncGenerator[Step, None]:
        loop = asyncio.get_running_loop()
        outputs: asyncio.Queue[tuple[list[int], list[TokenLogprob], str | None] | BaseException] = (
            asyncio.Queue()
        )
        cancel = threading.Event()

        def emit(item: tuple[list[int], list[TokenLogprob], str | None] | BaseException) -> None:
            loop.call_soon_threadsafe(outputs.put_nowait, item)

        work = loop.run_in_executor(
            self.executor, _step_loop, self.hf, prompt_ids, params, max_tokens, emit, cancel
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
