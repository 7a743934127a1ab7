"""Incremental detokenizing when the tokenizer cleans up spaces before punctuation.

Some tokenizers (llama.cpp's with ``clean_spaces``, Hugging Face's with
``clean_up_tokenization_spaces``) decode ``"true ,"`` as ``"true,"``: text
already sent changes once the comma arrives. The stream must still carry every
later token (a grammar-constrained JSON document would otherwise stop short).
"""

from __future__ import annotations

from collections.abc import Sequence

from maas.serving.detokenize import IncrementalDecoder

PIECES = ["{", '"a"', " :", "true", " ", ",", ' "b"', ":", "1", "}"]


class CleaningTokenizer:
    """Token i is PIECES[i]; decoding removes a space before a comma, as clean-up does."""

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(PIECES[i] for i in ids).replace(" ,", ",")


def test_text_after_a_cleaned_up_space_still_streams_as_the_model_wrote_it() -> None:
    decoder = IncrementalDecoder(CleaningTokenizer())
    out = "".join(decoder.push([i]) for i in range(len(PIECES))) + decoder.flush()
    assert out == "".join(PIECES)


def test_a_rewrite_of_more_than_spaces_waits_for_agreement() -> None:
    class Rewriting:
        def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
            return "ab" if len(ids) == 1 else "xy"

    decoder = IncrementalDecoder(Rewriting())
    assert decoder.push([0]) == "ab"
    assert decoder.push([1]) == ""
