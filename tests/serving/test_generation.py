"""The pieces of the generation engine that need no model: stop strings and UTF-8 streaming."""

from __future__ import annotations

from pathlib import Path

import pytest

from maas.serving.generation import IncrementalDecoder, SamplingParams, StopMatcher
from tests.helpers import make_tiny_llm


def _feed_all(matcher: StopMatcher, pieces: list[str]) -> str:
    out = []
    for piece in pieces:
        out.append(matcher.feed(piece))
        if matcher.stopped:
            break
    else:
        out.append(matcher.flush())
    return "".join(out)


@pytest.mark.parametrize(
    ("pieces", "stops", "expected", "stopped"),
    [
        (["Hello", " wor", "ld. Bye"], ("world",), "Hello ", True),
        (["ab", "c##", "d"], ("##",), "abc", True),
        (["a#", "b"], ("##",), "a#b", False),  # a partial match that never completes is released
        (["x", "END", "y"], ("END", "x"), "", True),  # the earliest stop wins
        (["no stops here"], (), "no stops here", False),
    ],
)
def test_stop_strings_cut_the_text_and_are_never_sent(
    pieces: list[str], stops: tuple[str, ...], expected: str, stopped: bool
) -> None:
    matcher = StopMatcher(stops)
    assert _feed_all(matcher, pieces) == expected
    assert matcher.stopped is stopped


def test_text_that_may_start_a_stop_string_is_held_back() -> None:
    matcher = StopMatcher(("</answer>",))
    assert matcher.feed("42 </ans") == "42 "
    assert matcher.feed("wer> tail") == ""
    assert matcher.stopped


def test_incremental_decoding_never_splits_a_multibyte_character(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(make_tiny_llm(tmp_path / "m"))
    text = "北京是中国的首都。你好，世界！ mixed 文字 and ASCII"
    ids = tokenizer(text)["input_ids"]
    assert len(ids) > len(text) // 2  # byte-level tokens: characters span several
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push([token]) for token in ids]
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)
    assert any(piece == "" for piece in pieces)  # some tokens had to wait for their last byte


def test_exact_path_is_chosen_for_seeds_and_top_logprobs() -> None:
    assert not SamplingParams(max_tokens=4, temperature=0, seed=1).exact_path
    assert SamplingParams(max_tokens=4, temperature=0.7, seed=1).exact_path
    assert SamplingParams(max_tokens=4, top_logprobs=2).exact_path
    assert not SamplingParams(max_tokens=4, temperature=0.7).exact_path
