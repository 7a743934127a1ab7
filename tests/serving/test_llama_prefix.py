"""The prefix cache's policy: longest match, the last prompt token read again, LRU, bounds.

Pure bookkeeping (no llama.cpp): the decode loop's use of it, with real KV
cells, is tested in tests/serving/test_generation_llama.py.
"""

from __future__ import annotations

import random

from maas.serving.llama_prefix import MIN_TOKENS, PrefixCache, PrefixMatch, common_prefix

SYSTEM = list(range(100, 100 + 3 * MIN_TOKENS))


def test_common_prefix_agrees_with_a_plain_scan() -> None:
    rng = random.Random(7)
    for _ in range(500):
        length = rng.randrange(0, 60)
        a = [rng.randrange(3) for _ in range(length)]
        b = a[: rng.randrange(0, length + 1)] + [rng.randrange(3) for _ in range(rng.randrange(9))]
        expected = 0
        while expected < min(len(a), len(b)) and a[expected] == b[expected]:
            expected += 1
        assert common_prefix(a, b) == expected


def test_the_longest_match_wins_and_the_last_prompt_token_is_always_read() -> None:
    cache = PrefixCache(capacity=4, max_cells=1000)
    assert cache.park(1, [*SYSTEM, 1, 2, 3]) == []
    assert cache.park(2, SYSTEM[:MIN_TOKENS]) == []
    # The whole prompt is cached under sequence 1, but its last token is read again.
    assert cache.lookup([*SYSTEM, 1, 2, 3]) == PrefixMatch(1, len(SYSTEM) + 2)
    assert cache.lookup([*SYSTEM, 9]) == PrefixMatch(1, len(SYSTEM))
    # A running sequence's cells count as much as a parked one's.
    running = [(7, [*SYSTEM, 9, 9])]
    assert cache.lookup([*SYSTEM, 9, 9, 4], running) == PrefixMatch(7, len(SYSTEM) + 2)


def test_short_matches_and_short_sequences_are_not_kept() -> None:
    cache = PrefixCache(capacity=4, max_cells=1000)
    assert cache.park(3, SYSTEM[: MIN_TOKENS - 1]) == [3]  # handed straight back
    assert len(cache) == 0
    cache.park(4, SYSTEM)
    assert cache.lookup([*SYSTEM[: MIN_TOKENS - 1], 0, 0]) is None
    assert cache.lookup([5, *SYSTEM]) is None


def test_capacity_drops_the_least_recently_used_and_counts_cells() -> None:
    cache = PrefixCache(capacity=2, max_cells=1000)
    a, b, c = ([n] * MIN_TOKENS * n for n in (1, 2, 3))
    cache.park(10, a)
    cache.park(11, b)
    assert cache.cells == len(a) + len(b)
    assert cache.lookup([*a, 0]) == PrefixMatch(10, len(a))  # 10 is now the most recent
    assert cache.park(12, c) == [11]
    assert cache.cells == len(a) + len(c)
    assert cache.evict() == 10
    assert cache.evict() == 12
    assert cache.evict() is None
    assert cache.cells == 0


def test_take_hands_a_parked_sequence_over_and_clear_frees_all() -> None:
    cache = PrefixCache(capacity=3, max_cells=1000)
    cache.park(1, SYSTEM)
    cache.park(2, [9, *SYSTEM])
    assert cache.take(1)
    assert not cache.take(1)
    assert cache.cells == len(SYSTEM) + 1
    assert cache.clear() == [2]
    assert (len(cache), cache.cells) == (0, 0)


def test_a_cache_of_capacity_zero_keeps_nothing() -> None:
    cache = PrefixCache(capacity=0, max_cells=1000)
    assert cache.park(5, SYSTEM) == [5]
    assert cache.lookup([*SYSTEM, 1]) is None


def test_parked_cells_stay_within_their_bound() -> None:
    cache = PrefixCache(capacity=8, max_cells=3 * len(SYSTEM) + 2)
    assert cache.park(1, SYSTEM) == []
    assert cache.park(2, [1, *SYSTEM]) == []
    assert cache.park(3, [2, *SYSTEM]) == []
    assert cache.park(4, [3, *SYSTEM]) == [1, 2]  # 48 + 3 x 49 > 146: the oldest go
    assert cache.cells == 2 * (len(SYSTEM) + 1)
    assert cache.park(5, SYSTEM * 4) == [5]  # alone past the bound: not kept


def test_a_sequence_that_extends_a_parked_one_replaces_it() -> None:
    cache = PrefixCache(capacity=8, max_cells=1000)
    cache.park(1, SYSTEM)
    cache.park(2, [9, *SYSTEM])
    assert cache.park(3, [*SYSTEM, 4, 5]) == [1]  # covers 1, not 2
    assert cache.cells == 2 * len(SYSTEM) + 3
    assert cache.lookup([*SYSTEM, 7]) == PrefixMatch(3, len(SYSTEM))
