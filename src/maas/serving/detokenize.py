"""Streaming text out of token ids: whole UTF-8 characters only, and stop strings never sent.

Text is detokenized incrementally and only released once it is valid UTF-8
(a Chinese character split over byte tokens waits for its last byte); stop
strings are matched on the text, never sent, and text that could still turn
into a stop string is held back until it cannot.
"""

from __future__ import annotations

from typing import Any


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
        return self._delta(text)

    def flush(self) -> str:
        """What is left at the end, even bytes that never formed a character (as U+FFFD)."""
        text: str = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        return self._delta(text)

    def _delta(self, text: str) -> str:
        """The part of ``text`` (all ids decoded) not sent yet."""
        if not text.startswith(self.emitted):
            # Tokenizers that clean up spaces (" ," -> ",") rewrite text already sent
            # once a punctuation mark follows it. The space is out; what follows the
            # part both agree on is sent, so the caller gets the model's own text (a
            # JSON document stays whole). Any other rewrite waits for agreement.
            agreed = _common_prefix(text, self.emitted)
            if not self.emitted[agreed:].isspace():
                return ""
            delta, self.emitted = text[agreed:], text
            return delta
        delta, self.emitted = text[len(self.emitted) :], text
        return delta


def _common_prefix(a: str, b: str) -> int:
    """How many leading characters ``a`` and ``b`` share."""
    size = min(len(a), len(b))
    for i in range(size):
        if a[i] != b[i]:
            return i
    return size
