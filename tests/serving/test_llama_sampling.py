"""Per-sequence sampler chains on llama.cpp: biases, penalties, min-p, grammars.

A tiny random Llama written as a Q8_0 GGUF (tests/gguf_helpers.py) served by the
real llama.cpp engine. Its weights are random, so what a test sees follows from
the sampler chain, not from a model that happens to behave. The output of
grammar-constrained requests through the ``openai`` client is tested in
tests/e2e/test_openai_structured.py and tests/e2e/test_openai_tools.py.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from contextlib import aclosing
from dataclasses import replace
from pathlib import Path

import pytest

from maas.errors import InvalidRequestError
from maas.registry.schemas import VersionInfo
from maas.serving.generation import (
    GenerationRequest,
    Message,
    SamplingParams,
    TokenLogprob,
)
from maas.serving.llama_sampling import check_params
from tests.gguf_helpers import write_tiny_llama_gguf
from tests.serving.llama_engines import llama_engine, pushed

llama_cpp = pytest.importorskip("llama_cpp")

from maas.serving.generation_llama import LlamaGenerationEngine  # noqa: E402

PROMPT = "the quick brown fox"


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny.Q8_0.gguf"
    write_tiny_llama_gguf(path, context=1024)
    return path


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[VersionInfo]:
    yield from pushed(tmp_path_factory.mktemp("home"), tiny_gguf)


async def _generate(
    engine: LlamaGenerationEngine, params: SamplingParams
) -> tuple[list[int], list[TokenLogprob]]:
    """The token ids of one completion of PROMPT (and their log-probabilities, if asked)."""
    ids = engine.llama.encode_text(PROMPT)
    assert params.max_tokens is not None
    tokens: list[int] = []
    logprobs: list[TokenLogprob] = []
    async with aclosing(engine._steps(ids, params, params.max_tokens)) as steps:
        async for new, lps, _ in steps:
            tokens.extend(new)
            logprobs.extend(lps)
    return tokens, logprobs


def test_a_logit_bias_of_100_forces_a_token_and_of_minus_100_bans_one(
    tiny_gguf: Path, version: VersionInfo
) -> None:

    async def main() -> None:
        async with llama_engine(tiny_gguf, version) as engine:
            greedy = SamplingParams(max_tokens=16, temperature=0)
            plain, _ = await _generate(engine, greedy)
            forced, _ = await _generate(engine, replace(greedy, logit_bias=((42, 100),)))
            banned_token = Counter(plain).most_common(1)[0][0]
            banned, _ = await _generate(engine, replace(greedy, logit_bias=((banned_token, -100),)))
        assert forced == [42] * 16
        assert banned_token not in banned
        assert banned != plain

    asyncio.run(main())


def test_penalties_lower_logits_by_openais_formula_over_generated_tokens_only(
    tiny_gguf: Path, version: VersionInfo
) -> None:
    """Greedy with penalties picks argmax(logit - frequency x count - presence x [count > 0]).

    Checked step by step against the raw log-probabilities of the top tokens
    (a logprob differs from its logit by a per-step constant). The counts start
    empty: the prompt's tokens are not penalised.
    """

    async def main() -> None:
        frequency, presence = 1.5, 0.7
        params = SamplingParams(
            max_tokens=48,
            temperature=0,
            top_logprobs=20,
            frequency_penalty=frequency,
            presence_penalty=presence,
        )
        async with llama_engine(tiny_gguf, version) as engine:
            tokens, logprobs = await _generate(engine, params)
            plain, _ = await _generate(engine, SamplingParams(max_tokens=48, temperature=0))
        assert tokens != plain  # the penalties changed something
        counts: Counter[str] = Counter()
        checked = penalised = 0
        for entry in logprobs:
            # Tokens whose text is not a whole character all read as U+FFFD: only
            # the others can be told apart (and the argmax is the argmax of any
            # subset that holds it).
            scores = {
                text: lp - frequency * counts[text] - presence * (counts[text] > 0)
                for text, lp in entry.top
                if "\ufffd" not in text
            }
            if entry.token in scores:
                assert entry.token == max(scores, key=scores.__getitem__)
                checked += 1
                penalised += entry.token != entry.top[0][0]  # not the raw argmax
            counts[entry.token] += 1
        assert checked >= 16  # many steps could be checked
        assert penalised >= 1  # and at some the penalty chose another token

    asyncio.run(main())


def test_min_p_of_one_keeps_only_the_most_likely_token(
    tiny_gguf: Path, version: VersionInfo
) -> None:

    async def main() -> None:
        async with llama_engine(tiny_gguf, version) as engine:
            greedy, _ = await _generate(engine, SamplingParams(max_tokens=24, temperature=0))
            sampled, _ = await _generate(
                engine, SamplingParams(max_tokens=24, temperature=1.5, seed=7, min_p=1.0)
            )
            free, _ = await _generate(
                engine, SamplingParams(max_tokens=24, temperature=1.5, seed=7)
            )
        assert sampled == greedy
        assert free != greedy

    asyncio.run(main())


def test_repetition_penalty_changes_greedy_tokens(tiny_gguf: Path, version: VersionInfo) -> None:

    async def main() -> None:
        async with llama_engine(tiny_gguf, version) as engine:
            plain, _ = await _generate(engine, SamplingParams(max_tokens=48, temperature=0))
            penalised, _ = await _generate(
                engine, SamplingParams(max_tokens=48, temperature=0, repetition_penalty=1.5)
            )
        assert penalised != plain
        assert max(Counter(penalised).values()) <= max(Counter(plain).values())

    asyncio.run(main())


def test_logit_bias_ids_outside_the_vocabulary_are_a_400_naming_logit_bias(
    tiny_gguf: Path, version: VersionInfo
) -> None:

    async def main() -> None:
        async with llama_engine(tiny_gguf, version) as engine:
            request = GenerationRequest(
                prompt=PROMPT, params=SamplingParams(max_tokens=4, logit_bias=((10_000, 5.0),))
            )
            with pytest.raises(InvalidRequestError) as caught:
                await engine.prepare(request)
        assert caught.value.param == "logit_bias"
        assert "10000" in caught.value.message

    asyncio.run(main())


def test_a_grammar_llama_cpp_cannot_parse_is_refused_before_the_loop(
    tiny_gguf: Path, version: VersionInfo
) -> None:

    async def main() -> None:
        async with llama_engine(tiny_gguf, version) as engine:
            bad = SamplingParams(grammar='root ::= "a" (')
            with pytest.raises(InvalidRequestError) as caught:
                check_params(engine.llama, bad, grammar_param="response_format")
            check_params(
                engine.llama, SamplingParams(grammar='root ::= "a"'), grammar_param="tools"
            )
        assert caught.value.param == "response_format"

    asyncio.run(main())


def test_a_json_schema_request_prepares_a_grammar_the_loop_follows(
    tiny_gguf: Path, version: VersionInfo
) -> None:

    async def main() -> None:
        schema = {
            "type": "object",
            "properties": {"ok": {"type": "boolean"}, "color": {"enum": ["red", "green"]}},
            "required": ["ok", "color"],
        }
        request = GenerationRequest(
            messages=(Message("user", "hi"),),
            params=SamplingParams(max_tokens=64, temperature=1.0),
            response_format="json_schema",
            json_schema=json.dumps(schema),
            n=4,
        )
        async with llama_engine(tiny_gguf, version) as engine:
            ids, params = await engine.prepare(request)
            assert params.grammar is not None and "root ::=" in params.grammar
            texts = ["", "", "", ""]
            finished: list[str] = []
            async with aclosing(engine.generate(ids, params, 4)) as chunks:
                async for chunk in chunks:
                    texts[chunk.index] += chunk.text
                    if chunk.finish_reason is not None:
                        finished.append(chunk.finish_reason)
        assert finished == ["stop"] * 4
        for text in texts:
            value = json.loads(text)
            assert isinstance(value["ok"], bool) and value["color"] in ("red", "green")
            assert set(value) == {"ok", "color"}

    asyncio.run(main())


def test_checking_the_drawn_token_first_gives_the_tokens_of_masking_first(
    tiny_gguf: Path, version: VersionInfo
) -> None:
    """Greedy draws the grammar checks afterwards = greedy over the grammar-masked vocabulary.

    temperature 1 with top_k 1 is greedy too, but its filter keeps the grammar
    first in the chain (the whole vocabulary masked at every step).
    """

    async def main() -> None:
        schema = {
            "type": "object",
            "properties": {"a": {"type": "string", "maxLength": 40}},
            "required": ["a"],
        }
        request = GenerationRequest(
            messages=(Message("user", "hi"),),
            params=SamplingParams(max_tokens=80, temperature=0),
            response_format="json_schema",
            json_schema=json.dumps(schema),
        )
        async with llama_engine(tiny_gguf, version) as engine:
            ids, checked_after = await engine.prepare(request)
            masked_first = replace(checked_after, temperature=1.0, top_k=1)
            tokens = []
            for params in (checked_after, masked_first):
                got: list[int] = []
                async with aclosing(engine._steps(ids, params, 80)) as steps:
                    async for new, _, _ in steps:
                        got.extend(new)
                tokens.append(got)
        assert tokens[0] == tokens[1]
        assert len(tokens[0]) > 8

    asyncio.run(main())


def test_a_lazy_grammar_leaves_the_text_free_until_its_trigger_then_constrains_it(
    tiny_gguf: Path, version: VersionInfo
) -> None:
    """What a tool_choice "auto" request gets: words as the model likes, a call held to form.

    A seeded free run shows where some text first appears; the same seed with a
    lazy grammar triggered by that text writes the same words up to it, then
    exactly what the grammar allows after it, then ends.
    """

    async def main() -> None:
        free = SamplingParams(max_tokens=40, temperature=1.0, seed=7)
        async with llama_engine(tiny_gguf, version) as engine:
            decode = engine.llama.tokenizer.decode
            tokens, _ = await _generate(engine, free)
            pieces = [decode([t]) for t in tokens]
            for k in range(3, len(pieces)):  # a piece whose text first appears at its token
                before, trigger = "".join(pieces[:k]), pieces[k]
                # ASCII: no byte of it can hide in the halves of characters around it.
                first_here = (before + trigger).find(trigger) == len(before)
                if trigger.isascii() and trigger.strip() and first_here:
                    break
            else:
                pytest.fail(f"no usable trigger in {pieces}")
            grammar = f'root ::= {json.dumps(trigger)} " done"'
            lazy = replace(free, grammar=grammar, grammar_trigger=trigger)
            got, _ = await _generate(engine, lazy)
            after = decode(got[k + 1 :])
        assert got[: k + 1] == tokens[: k + 1]  # free until the trigger, the same draws
        assert after == " done"

    asyncio.run(main())
