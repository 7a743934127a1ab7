"""Per-sequence sampler chains of the llama.cpp decode loop.

Every sequence in ``generation_llama_loop`` samples with a chain of its own,
built here from its ``SamplingParams``: llama.cpp's samplers, applied in
order to the logits of that sequence's row of the batch. The chain owns the
sequence's random stream (seeded or not), so what a sequence draws never
depends on what else runs beside it. ``llama_sampler_sample`` applies the
chain, picks the token and then accepts it into every sampler of the chain, so
the stateful ones (the grammar's parse, the penalties' token counts) advance
with the sequence and need nothing from the loop.

Order:

1. ``logit_bias``: the caller's additions to raw logits (as OpenAI applies them,
   greedy included);
2. the grammar (structured output, tool calls): tokens that cannot continue
   the required text get -inf, so every later step only sees legal tokens.
   Where that gives the same draw (greedy, or temperature without filters),
   the grammar is asked about the drawn token first and masks the vocabulary
   only when it refuses it (``llama_grammar``): the same tokens, cheaper;
3. the penalties (presence, frequency, repetition) over the tokens generated
   so far: the prompt is not counted, as OpenAI defines presence and frequency;
4. temperature 0 is a plain argmax of what is left; otherwise the temperature,
   then the filters on the tempered distribution (top-k, top-p, min-p, as
   transformers orders its warpers) and the draw last.
"""

from __future__ import annotations

import ctypes
from dataclasses import replace
from typing import Any

from maas.errors import InvalidRequestError
from maas.runtimes.llama_cpp import LlamaCppTextGenerationRuntime
from maas.runtimes.text_generation import TextGenerationRuntime
from maas.serving.generation_types import SamplingParams
from maas.serving.llama_grammar import GrammarFirstSampler, exact_for

# Tokens the penalties remember when a sequence's max_tokens is not resolved yet.
_PENALTY_WINDOW = 4096


def build_sampler(lib: Any, vocab: Any, params: SamplingParams) -> Any:
    """A new ``llama_sampler`` chain for one sequence (``vocab``: the model's ``llama_vocab``).

    Free it with ``free_sampler``. A grammar that llama.cpp cannot parse raises
    ``ValueError`` (``check_params`` refuses such a grammar before a sequence
    reaches the loop, so this is never the first place one fails).
    """
    if params.grammar is not None and exact_for(params):
        # The grammar asked about the drawn token first, the vocabulary only if refused.
        grammar = _grammar(lib, vocab, params.grammar, params.grammar_trigger)
        rest = build_sampler(lib, vocab, replace(params, grammar=None, grammar_trigger=None))
        chain = _chain(lib)
        lib.llama_sampler_chain_add(chain, GrammarFirstSampler(lib, vocab, grammar, rest).sampler)
        return chain
    chain = _chain(lib)
    n_vocab = int(lib.llama_vocab_n_tokens(vocab))
    if params.logit_bias:
        biases = (lib.llama_logit_bias * len(params.logit_bias))()
        for slot, (token, bias) in zip(biases, params.logit_bias, strict=True):
            slot.token = token
            slot.bias = bias
        # llama.cpp copies the array into the sampler.
        lib.llama_sampler_chain_add(
            chain, lib.llama_sampler_init_logit_bias(n_vocab, len(params.logit_bias), biases)
        )
    if params.grammar is not None:
        try:
            grammar = _grammar(lib, vocab, params.grammar, params.grammar_trigger)
            lib.llama_sampler_chain_add(chain, grammar)
        except ValueError:
            lib.llama_sampler_free(chain)
            raise
    if params.penalized:
        # The window is the whole completion: every generated token counts.
        window = params.max_tokens or _PENALTY_WINDOW
        lib.llama_sampler_chain_add(
            chain,
            lib.llama_sampler_init_penalties(
                n_vocab,
                window,
                params.repetition_penalty,
                params.frequency_penalty,
                params.presence_penalty,
            ),
        )
    if params.temperature == 0:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        return chain
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(params.temperature))
    if params.top_k > 0:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(params.top_k))
    if params.top_p < 1.0:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(params.top_p, 1))
    if params.min_p > 0.0:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_min_p(params.min_p, 1))
    seed = lib.LLAMA_DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed))
    return chain


def _chain(lib: Any) -> Any:
    chain_params = lib.llama_sampler_chain_default_params()
    chain_params.no_perf = True
    return lib.llama_sampler_chain_init(chain_params)


def _grammar(lib: Any, vocab: Any, grammar: str, trigger: str | None) -> Any:
    """llama.cpp's grammar sampler; with ``trigger``, lazy: it waits for that text.

    A lazy grammar lets every token through until the generated text contains
    ``trigger``; then it parses from the trigger's first character on (the
    tokens that wrote it are replayed into the parse, even one that began
    before it) and constrains every later token.
    """
    if trigger is None:
        sampler = lib.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    else:
        patterns = (ctypes.c_char_p * 1)(_regex_literal(trigger).encode())
        sampler = lib.llama_sampler_init_grammar_lazy_patterns(
            vocab, grammar.encode(), b"root", patterns, 1, None, 0
        )
    if not sampler:
        raise ValueError("llama.cpp could not parse the grammar")
    return sampler


def _regex_literal(text: str) -> str:
    """``text`` as an ECMAScript regex (llama.cpp's ``std::regex``) matching itself."""
    return "".join("\\" + c if c in "\\^$.*+?()[]{}|/" else c for c in text)


def free_sampler(lib: Any, chain: Any) -> None:
    """Free a chain and every sampler in it."""
    lib.llama_sampler_free(chain)


def check_params(
    runtime: TextGenerationRuntime, params: SamplingParams, *, grammar_param: str
) -> None:
    """Refuse, before a sequence reaches the loop, what its chain could not be built from.

    ``logit_bias`` ids must be in the model's vocabulary, and llama.cpp must
    parse the grammar (it is built once here and freed: a grammar that failed in
    the loop would fail every sequence of the model). A no-op for other runtimes.
    """
    if not isinstance(runtime, LlamaCppTextGenerationRuntime):
        return
    lib, vocab = runtime.lib, runtime.vocab
    n_vocab = int(lib.llama_vocab_n_tokens(vocab))
    for token, _ in params.logit_bias:
        if not 0 <= token < n_vocab:
            raise InvalidRequestError(
                f"logit_bias: token id {token} is not in this model's vocabulary "
                f"(0 to {n_vocab - 1})",
                param="logit_bias",
            )
    if params.grammar is not None:
        try:
            sampler = _grammar(lib, vocab, params.grammar, params.grammar_trigger)
        except ValueError as exc:
            raise InvalidRequestError(
                f"{grammar_param}: llama.cpp could not parse the grammar made from it",
                param=grammar_param,
            ) from exc
        lib.llama_sampler_free(sampler)
