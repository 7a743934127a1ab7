"""A grammar-constrained draw that checks the grammar against one token, not the vocabulary.

llama.cpp's grammar sampler tests every token of the vocabulary against the
grammar's parse at every step: 4-8 ms a token on SmolLM2's 49,152 tokens, a
third of a step. A model that follows the format mostly draws a token the
grammar allows anyway, so, as llama.cpp's own server does, this sampler first
draws without the grammar and asks the grammar about that one token; only
when it is refused does it mask the whole vocabulary and draw again.

Where this is exact it is used (``exact_for``): greedy decoding, where the
argmax is the argmax of the allowed tokens whenever it is allowed, and plain
temperature sampling, where accepting an allowed draw or else drawing from the
allowed tokens renormalised gives each allowed token p/Z, the constrained
distribution. Filters (top-k, top-p, min-p) would be computed on different
sets in the two draws, so a chain with them keeps the grammar first.

It is a llama.cpp sampler written in Python (``llama_sampler_init`` with a
ctypes interface); llama.cpp calls it from ``llama_sampler_sample`` on the
decode loop's thread. It owns the grammar sampler and the chain of the other
samplers (``rest``), and frees them when llama.cpp frees it.
"""

from __future__ import annotations

import ctypes
import logging
import math
import threading
from typing import Any

from maas.serving.generation_types import SamplingParams

log = logging.getLogger("maas.serving")

# Samplers alive in llama.cpp, by address: their ctypes callbacks must outlive every call.
_alive: dict[int, GrammarFirstSampler] = {}
# Freed ones, per decode-loop thread (each creates and frees its own), dropped at that
# thread's next creation: never inside their own free callback.
_local = threading.local()


def _freed_here() -> list[GrammarFirstSampler]:
    freed: list[GrammarFirstSampler] | None = getattr(_local, "freed", None)
    if freed is None:
        freed = _local.freed = []
    return freed


def exact_for(params: SamplingParams) -> bool:
    """Whether drawing first and checking after gives exactly the grammar-first draw."""
    if params.temperature == 0:
        return True
    return params.top_k == 0 and params.top_p >= 1.0 and params.min_p == 0.0


class GrammarFirstSampler:
    """One sequence's grammar plus the rest of its chain, as one llama.cpp sampler."""

    def __init__(self, lib: Any, vocab: Any, grammar: Any, rest: Any) -> None:
        _freed_here().clear()
        self.lib = lib
        self.grammar = grammar  # llama_sampler * (grammar), owned
        self.rest = rest  # llama_sampler * (chain: bias, penalties, the draw), owned
        n_vocab = int(lib.llama_vocab_n_tokens(vocab))
        self._scratch = (lib.llama_token_data * n_vocab)()  # the unconstrained draw's copy
        self._one = (lib.llama_token_data * 1)()
        self._item = ctypes.sizeof(lib.llama_token_data)
        # The callbacks it needs; every other entry stays NULL (name, reset, clone, the
        # backend-sampling ones), which llama.cpp allows for a sampler without context.
        self.iface = lib.llama_sampler_i(
            accept=lib.llama_sampler_i_accept(self._accept),
            apply=lib.llama_sampler_i_apply(self._apply),
            free=lib.llama_sampler_i_free(self._free),
        )
        self.sampler = lib.llama_sampler_init(ctypes.byref(self.iface), None)
        _alive[ctypes.addressof(self.sampler.contents)] = self
        self.fast = 0  # draws the grammar allowed at once
        self.slow = 0  # draws it refused, drawn again from the allowed tokens

    def _apply(self, _smpl: Any, cur_p: Any) -> None:
        lib, candidates = self.lib, cur_p.contents
        size = int(candidates.size)
        try:
            ctypes.memmove(self._scratch, candidates.data, size * self._item)
            trial = lib.llama_token_data_array(self._scratch, size, -1, False)
            lib.llama_sampler_apply(self.rest, ctypes.byref(trial))
            token = int(self._scratch[trial.selected].id)
            self._one[0].id, self._one[0].logit, self._one[0].p = token, 0.0, 0.0
            single = lib.llama_token_data_array(self._one, 1, -1, False)
            lib.llama_sampler_apply(self.grammar, ctypes.byref(single))
            if math.isfinite(self._one[0].logit):
                index = token if candidates.data[token].id == token else _find(candidates, token)
                if index >= 0:
                    candidates.selected = index
                    self.fast += 1
                    return
        except Exception:  # never let an error cross into llama.cpp; the slow path is exact
            log.exception("grammar-first sampling failed; masking the vocabulary")
        self.slow += 1
        lib.llama_sampler_apply(self.grammar, cur_p)
        lib.llama_sampler_apply(self.rest, cur_p)

    def _accept(self, _smpl: Any, token: int) -> None:
        self.lib.llama_sampler_accept(self.grammar, token)
        self.lib.llama_sampler_accept(self.rest, token)

    def _free(self, smpl: Any) -> None:
        self.lib.llama_sampler_free(self.grammar)
        self.lib.llama_sampler_free(self.rest)
        self.grammar = self.rest = None
        found = _alive.pop(ctypes.addressof(smpl.contents), None)
        if found is not None:
            _freed_here().append(found)


def _find(candidates: Any, token: int) -> int:
    for index in range(int(candidates.size)):
        if candidates.data[index].id == token:
            return index
    return -1
