"""Per-sequence sampler chains of the llama.cpp decode loop.

Every sequence in ``generation_llama_loop`` samples with a chain of its own,
built here from its ``SamplingParams``: llama.cpp's samplers, applied in
order to the logits of that sequence's row of the batch. The chain owns the
sequence's random stream (seeded or not), so what a sequence draws never
depends on what else runs beside it.

Order (as OpenAI and transformers define the parameters): the filters on the
tempered distribution come after the temperature, and the draw comes last.
Temperature 0 is a plain argmax.
"""

from __future__ import annotations

from typing import Any

from maas.serving.generation_types import SamplingParams


def build_sampler(lib: Any, vocab: Any, params: SamplingParams) -> Any:
    """A new ``llama_sampler`` chain for one sequence (``vocab``: the model's ``llama_vocab``).

    Free it with ``free_sampler``.
    """
    chain_params = lib.llama_sampler_chain_default_params()
    chain_params.no_perf = True
    chain = lib.llama_sampler_chain_init(chain_params)
    if params.temperature == 0:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        return chain
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(params.temperature))
    if params.top_k > 0:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(params.top_k))
    if params.top_p < 1.0:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(params.top_p, 1))
    seed = lib.LLAMA_DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed))
    return chain


def free_sampler(lib: Any, chain: Any) -> None:
    """Free a chain and every sampler in it."""
    lib.llama_sampler_free(chain)
