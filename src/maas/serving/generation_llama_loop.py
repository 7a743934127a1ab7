"""The llama.cpp decode loop: continuous batching of every running sequence of one model.

One thread per loaded GGUF model owns its llama.cpp context and runs steps:

1. **admit**: sequences waiting for a slot get one when a sequence id is free
   and the KV cache has room for their prompt and their whole ``max_tokens``
   (so a running sequence can never run out of cache mid-way); the longest
   prefix of the prompt that some sequence already holds in the cache is
   copied to the new one and not read again (``llama_prefix``);
2. **batch**: one ``llama_batch`` holds the next token of every decoding
   sequence (each under its own sequence id, at its own position) and then
   chunks of the prompts still being read, up to ``n_batch`` tokens;
3. **decode** (``llama_decode``, which releases the GIL, on as many threads as
   ``llama_threads.ThreadPolicy`` measured best), then **sample** each
   sequence whose token asked for logits with its own sampler chain
   (``llama_sampling``);
4. **deliver** the new tokens of the step to the event loop in one
   ``call_soon_threadsafe``; a sequence that ended (end-of-generation token,
   ``max_tokens``) or was cancelled (its caller went away) leaves the batch;
   its KV cells stay parked for later prompts with the same start until the
   prefix cache drops them (``llama_memory_seq_rm``) and frees the id.

The loop sleeps on a condition when nothing runs. Everything here runs on the
loop thread except ``submit``, ``cancel`` and ``close``, which only touch the
shared queues under the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from maas.errors import UnavailableError
from maas.runtimes.llama_cpp import LlamaCppTextGenerationRuntime
from maas.serving.generation_types import SamplingParams, TokenLogprob
from maas.serving.llama_prefix import PrefixCache
from maas.serving.llama_sampling import build_sampler, free_sampler
from maas.serving.llama_threads import IdleMeter, ThreadPolicy

log = logging.getLogger("maas.serving")

# What a sequence receives after each step: new ids, their log-probabilities, and
# "stop" / "length" on the last one; or the error that ended the loop.
Delivery = tuple[list[int], list[TokenLogprob], str | None] | BaseException


@dataclass(eq=False)
class Sequence:
    """One completion in the loop. The loop thread alone writes the fields after ``params``."""

    prompt: list[int]
    max_tokens: int
    params: SamplingParams
    deliver: Callable[[Delivery], None]  # called on the event loop
    seq_id: int = -1
    fed: int = 0  # prompt tokens already decoded into the cache
    generated: int = 0
    cached: int = 0  # leading prompt tokens reused from the prefix cache, set at admission
    output: list[int] = field(default_factory=list)  # sampled tokens, the latest last
    last: int = -1  # the latest sampled token, fed at the next step
    sampler: Any = None
    cancelled: bool = False
    decoding: bool = field(default=False)  # the whole prompt is in the cache
    cancelled_at: int = -1  # the loop's step count when cancel() was called
    released_at: int = -1  # ... and when its slot and KV cells were freed

    @property
    def reserve(self) -> int:
        """KV cells this sequence may come to hold."""
        return len(self.prompt) + self.max_tokens

    @property
    def position(self) -> int:
        return self.fed + max(0, self.generated - 1)

    def cache_tokens(self) -> list[int]:
        """The token ids whose KV this sequence holds, position 0 first.

        The latest sampled token is not among them: it is read at the next step.
        """
        return self.prompt[: self.fed] + self.output[: max(0, self.generated - 1)]


class DecodeLoop:
    """The decode thread of one llama.cpp model (see the module docstring)."""

    def __init__(
        self,
        runtime: LlamaCppTextGenerationRuntime,
        loop: asyncio.AbstractEventLoop,
        name: str,
        on_release: Callable[[], None] = lambda: None,
    ) -> None:
        self.runtime = runtime
        self.lib = runtime.lib
        self.ctx = runtime.ctx
        self.loop = loop
        self.on_release = on_release  # called on the event loop once slots were freed
        self.cells = int(self.lib.llama_n_ctx(self.ctx))
        self.batch_tokens = runtime.batch_tokens
        self._memory = self.lib.llama_get_memory(self.ctx)
        self._free_ids = list(range(runtime.sequence_ids - 1, -1, -1))
        # Parked cells are bounded to a quarter of the cache (see llama_prefix).
        self._prefix = PrefixCache(runtime.sequence_ids - runtime.max_sequences, self.cells // 4)
        self._pending: deque[Sequence] = deque()
        self._active: list[Sequence] = []
        self._reserved = 0
        self.steps = 0  # llama_decode calls so far
        self._lock = threading.Condition()
        self._closing = False
        self._batch = self.lib.llama_batch_init(self.batch_tokens, 0, 1)
        self.threads = ThreadPolicy(runtime.threads, runtime.max_threads, spare=IdleMeter())
        self._threads_now = runtime.threads  # what the context computes with now
        self._thread = threading.Thread(target=self._run, name=f"maas-llama-{name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ any thread

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closing

    def submit(self, sequence: Sequence) -> None:
        with self._lock:
            if self._closing:
                raise UnavailableError("the model's decode loop stopped; retry")
            self._pending.append(sequence)
            self._lock.notify()

    def cancel(self, sequence: Sequence) -> None:
        """Stop a sequence: its slot is freed at the start of the next step."""
        with self._lock:
            sequence.cancelled = True
            sequence.cancelled_at = self.steps
            if sequence in self._pending:
                self._pending.remove(sequence)
            self._lock.notify()

    def close(self) -> None:
        """Stop the thread (blocking until it has); sequences still in it get an error."""
        with self._lock:
            self._closing = True
            self._lock.notify()
        self._thread.join()

    def cache_usage(self) -> float:
        return self._reserved / self.cells if self.cells else 0.0

    # ------------------------------------------------------------ loop thread

    def _run(self) -> None:
        error: BaseException = RuntimeError("the model is unloading")
        # A loop started again after a failure finds the cells of the old one.
        self.lib.llama_memory_clear(self._memory, True)
        try:
            while True:
                with self._lock:
                    while not (self._closing or self._pending or self._active):
                        self._lock.wait()
                    if self._closing:
                        break
                    self._admit()
                cancelled = [s for s in self._active if s.cancelled]
                for sequence in cancelled:
                    self._release(sequence)
                if cancelled:
                    self._deliver([])
                if self._active:
                    self._step()
        except BaseException as exc:  # handed to every caller; the loop is dead
            log.exception("llama.cpp decode loop of %s failed", self.runtime.version.ref)
            error = exc
        finally:
            with self._lock:
                self._closing = True
                left = [*self._active, *self._pending]
                self._pending.clear()
            for sequence in list(self._active):
                self._release(sequence, park=False)
            for seq_id in self._prefix.clear():
                self._forget(seq_id)
            self._deliver([(s, error) for s in left])
            self.lib.llama_batch_free(self._batch)

    def _admit(self) -> None:
        """Move waiting sequences into the batch while ids and cache cells last (lock held)."""
        lib, memory, prefix = self.lib, self._memory, self._prefix
        while self._pending:
            sequence = self._pending[0]
            need = sequence.reserve
            if self._active and self._reserved + need > self.cells:
                return  # first come, first served: it waits for running ones to end
            running = [(s.seq_id, s.cache_tokens()) for s in self._active]
            match = prefix.lookup(sequence.prompt, running)
            short = self._reserved + prefix.cells + need > self.cells
            if match is not None and (short or not self._free_ids) and prefix.take(match.seq_id):
                # The parked sequence becomes this one: its id, and its cells up to the match.
                sequence.seq_id = match.seq_id
                lib.llama_memory_seq_rm(memory, sequence.seq_id, match.tokens, -1)
            else:
                if not self._free_ids and not self._drop_parked():
                    return  # every id runs a sequence (the engine admits no more than that)
                sequence.seq_id = self._free_ids.pop()
                if match is not None:  # the same cells, tagged with one more sequence id
                    lib.llama_memory_seq_cp(memory, match.seq_id, sequence.seq_id, 0, match.tokens)
            # Parked cells give way to running sequences, least recently used first.
            while self._reserved + prefix.cells + need > self.cells and self._drop_parked():
                pass
            self._pending.popleft()
            if match is not None:
                sequence.cached = sequence.fed = match.tokens
            sequence.sampler = build_sampler(lib, self.runtime.vocab, sequence.params)
            self._reserved += need
            self._active.append(sequence)

    def _release(self, sequence: Sequence, *, park: bool = True) -> None:
        """Take a sequence out of the batch; its cells stay parked when worth it."""
        sequence.released_at = self.steps
        self._active.remove(sequence)
        free_sampler(self.lib, sequence.sampler)
        sequence.sampler = None
        with self._lock:
            self._reserved -= sequence.reserve
        tokens = sequence.cache_tokens() if park else []
        for seq_id in self._prefix.park(sequence.seq_id, tokens):
            self._forget(seq_id)

    def _drop_parked(self) -> bool:
        """Free the least recently used parked sequence; False when none is parked."""
        seq_id = self._prefix.evict()
        if seq_id is None:
            return False
        self._forget(seq_id)
        return True

    def _forget(self, seq_id: int) -> None:
        self.lib.llama_memory_seq_rm(self._memory, seq_id, -1, -1)
        with self._lock:
            self._free_ids.append(seq_id)

    def _step(self) -> None:
        lib, batch = self.lib, self._batch
        outputs: list[tuple[Sequence, int]] = []  # (sequence, batch row with logits)
        n = 0
        # The batch's arrays, fetched once a step (each attribute read builds a pointer).
        tokens, positions, n_seq_ids = batch.token, batch.pos, batch.n_seq_id
        seq_ids, wants_logits = batch.seq_id, batch.logits

        def put(token: int, position: int, seq_id: int, logits: bool) -> None:
            nonlocal n
            tokens[n] = token
            positions[n] = position
            n_seq_ids[n] = 1
            seq_ids[n][0] = seq_id
            wants_logits[n] = logits
            n += 1

        for sequence in self._active:  # one new token for each decoding sequence
            if sequence.decoding:
                put(sequence.last, sequence.position, sequence.seq_id, True)
                outputs.append((sequence, n - 1))
        for sequence in self._active:  # then prompts, in arrival order, while room lasts
            room = self.batch_tokens - n
            if sequence.decoding or room <= 0:
                continue
            start = sequence.fed
            take = min(room, len(sequence.prompt) - start)
            for offset in range(take):
                position = start + offset
                last = position == len(sequence.prompt) - 1
                put(sequence.prompt[position], position, sequence.seq_id, last)
            sequence.fed += take
            if sequence.fed == len(sequence.prompt):
                sequence.decoding = True
                outputs.append((sequence, n - 1))
        batch.n_tokens = n
        self.steps += 1
        # Steps that only decode are compared by their size; prompt steps are not compared.
        key = n if len(outputs) == n else None
        threads = self.threads.threads_for(key)
        if threads != self._threads_now:
            lib.llama_set_n_threads(self.ctx, threads, threads)
            self._threads_now = threads
        started = time.perf_counter()
        status = int(lib.llama_decode(self.ctx, batch))
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status} for a batch of {n} tokens")

        deliveries: list[tuple[Sequence, Delivery]] = []
        for sequence, row in outputs:
            token = int(lib.llama_sampler_sample(sequence.sampler, self.ctx, row))
            logprobs = (
                self._logprobs(row, token, sequence.params.top_logprobs)
                if sequence.params.top_logprobs is not None
                else []
            )
            sequence.generated += 1
            sequence.last = token
            sequence.output.append(token)
            finished: str | None = None
            if self.runtime.is_end(token):
                finished = "stop"
            elif sequence.generated >= sequence.max_tokens:
                finished = "length"
            deliveries.append((sequence, ([token], logprobs, finished)))
            if finished is not None:
                self._release(sequence)
        # Sampling is timed too: a second thread that spins on after the decode slows it.
        self.threads.record(key, threads, time.perf_counter() - started)
        self._deliver(deliveries)

    def _logprobs(self, row: int, token: int, top: int) -> list[TokenLogprob]:
        tokenizer = self.runtime.tokenizer
        pointer = self.lib.llama_get_logits_ith(self.ctx, row)
        logits = np.ctypeslib.as_array(
            ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(tokenizer.n_vocab,)
        ).astype(np.float64)  # (vocab,)
        peak = logits.max()
        logp = logits - (peak + np.log(np.exp(logits - peak).sum()))
        best: tuple[tuple[str, float], ...] = ()
        if top:
            order = np.argpartition(-logp, top - 1)[:top]
            order = order[np.argsort(-logp[order])]
            best = tuple((tokenizer.token_text(int(i)), float(logp[i])) for i in order)
        return [TokenLogprob(tokenizer.token_text(token), float(logp[token]), best)]

    def _deliver(self, deliveries: list[tuple[Sequence, Delivery]]) -> None:
        """Hand a step's results to the event loop (an empty list: slots were freed)."""
        released = not deliveries or any(
            isinstance(item, BaseException) or item[2] is not None for _, item in deliveries
        )
        # A closed event loop raises RuntimeError: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(
                _hand_over, deliveries, self.on_release if released else None
            )


def _hand_over(
    deliveries: list[tuple[Sequence, Delivery]], on_release: Callable[[], None] | None
) -> None:
    for sequence, item in deliveries:
        sequence.deliver(item)
    if on_release is not None:
        on_release()
