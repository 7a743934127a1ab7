"""Prefix caching of the llama.cpp decode loop: which KV cells a new sequence can reuse.

Requests to one model often start alike: the same system prompt, the same
few-shot examples, a conversation's earlier turns. The decode loop keeps the
KV cells of finished sequences under their sequence ids ("parked") instead of
freeing them, and a new sequence whose prompt starts with tokens some sequence
already holds in the cache (parked, or still running) gets those cells copied
to its own sequence id (``llama_memory_seq_cp``: with llama.cpp's unified KV
cache a copy only tags the same cells with one more sequence id, so nothing
is recomputed or duplicated) and reads only the rest of its prompt.

Policy (this class decides, the loop performs the llama.cpp calls):

* a sequence is parked when it leaves the loop (finished, cut by a stop string,
  or its caller went away) with at least ``MIN_TOKENS`` tokens in the cache;
  parked sequences whose tokens it starts with are dropped (it covers them);
* at most ``capacity`` sequences and ``max_cells`` cells stay parked; the
  least recently used one is dropped first, and whenever the loop needs its
  sequence id or its cells for a sequence that is running (a parked sequence
  never keeps a request waiting). The cell bound matters beyond memory: every
  token of a step attends over the whole span of used cells of the shared
  cache (masked, but computed), so parked cells cost running sequences time;
* the match is the longest common prefix of token ids, never the whole prompt:
  the last prompt token is always read again, since its logits give the first
  new token.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Shorter prefixes are not worth a lookup and a copy. Short ones still pay: on CPU a
# prompt token costs about as much as a decoded one, and 32 ten-token prompts that
# share nine tokens (the generation benchmark's) cost a 2.9 s prefill step unshared.
MIN_TOKENS = 4


@dataclass(frozen=True, slots=True)
class PrefixMatch:
    seq_id: int  # the sequence whose cells hold the prefix
    tokens: int  # how many leading prompt tokens they cover


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists (a list never equals a tuple)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:  # the common case of a cache hit: compared in C
        return n
    low, high = 0, n  # a[:low] == b[:low] and a[:high] != b[:high]
    while high - low > 1:
        middle = (low + high) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle
    return low


class PrefixCache:
    """The parked sequences of one decode loop (see the module docstring)."""

    def __init__(self, capacity: int, max_cells: int) -> None:
        self.capacity = capacity
        self.max_cells = max_cells
        self._parked: OrderedDict[int, list[int]] = OrderedDict()  # LRU first
        self.cells = 0  # cells held by parked sequences (shared ones counted for each)

    def __len__(self) -> int:
        return len(self._parked)

    def park(self, seq_id: int, tokens: Sequence[int]) -> list[int]:
        """Keep ``seq_id``'s cells; returns the sequence ids to free instead (LRU overflow).

        ``tokens`` are the ids whose KV the sequence holds, positions 0, 1, ...
        A sequence too short to be worth keeping, or a cache of capacity 0,
        hands ``seq_id`` straight back.
        """
        if self.capacity <= 0 or not MIN_TOKENS <= len(tokens) <= self.max_cells:
            return [seq_id]
        kept = list(tokens)  # a list: its slices compare equal to a prompt's
        # A parked sequence whose tokens all start this one is covered by it.
        dropped = [
            other
            for other, held in self._parked.items()
            if len(held) <= len(kept) and common_prefix(held, kept) == len(held)
        ]
        for other in dropped:
            self.cells -= len(self._parked.pop(other))
        self._parked[seq_id] = kept
        self.cells += len(kept)
        while len(self._parked) > self.capacity or self.cells > self.max_cells:
            dropped.append(self._drop_oldest())
        return dropped

    def lookup(
        self, prompt: list[int], running: Iterable[tuple[int, list[int]]] = ()
    ) -> PrefixMatch | None:
        """The longest reusable prefix of ``prompt`` among parked and ``running`` sequences.

        ``running``: (sequence id, tokens in the cache) of sequences still in the
        loop. A parked sequence that matches becomes the most recently used.
        """
        usable = len(prompt) - 1  # the last prompt token is always read again
        best: PrefixMatch | None = None
        for seq_id, tokens in (*self._parked.items(), *running):
            if best is not None and len(tokens) <= best.tokens:
                continue
            length = min(common_prefix(prompt, tokens), usable)
            if length >= MIN_TOKENS and (best is None or length > best.tokens):
                best = PrefixMatch(seq_id, length)
        if best is not None and best.seq_id in self._parked:
            self._parked.move_to_end(best.seq_id)
        return best

    def take(self, seq_id: int) -> bool:
        """Hand a parked sequence over to a new one (its id and cells); False if not parked."""
        tokens = self._parked.pop(seq_id, None)
        if tokens is None:
            return False
        self.cells -= len(tokens)
        return True

    def evict(self) -> int | None:
        """Drop the least recently used parked sequence; its id (to free), or None."""
        return self._drop_oldest() if self._parked else None

    def clear(self) -> list[int]:
        """Drop every parked sequence; their ids."""
        ids = list(self._parked)
        self._parked.clear()
        self.cells = 0
        return ids

    def _drop_oldest(self) -> int:
        seq_id, tokens = self._parked.popitem(last=False)
        self.cells -= len(tokens)
        return seq_id
