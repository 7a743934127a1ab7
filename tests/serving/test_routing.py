"""The router's draws: deterministic per request id or key, shares that follow the weights."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from maas.registry.refs import ModelRef
from maas.registry.routing import RoutingPolicy, Shadow, set_routing
from maas.registry.store import Registry
from maas.serving.routing import Router, draw, mirrored, targets

POLICY = RoutingPolicy("clf", (("1", 90), ("@candidate", 10)))


def first(policy: RoutingPolicy, request_id: str, key_id: str | None = None) -> ModelRef:
    return next(targets(policy, request_id, key_id))


def test_a_90_10_split_over_2000_requests_gives_the_second_target_10_percent() -> None:
    counts = Counter(str(first(POLICY, f"req-{i}")) for i in range(2000))
    assert set(counts) == {"clf:1", "clf@candidate"}
    assert 0.08 <= counts["clf@candidate"] / 2000 <= 0.12


def test_the_same_request_id_always_gets_the_same_target() -> None:
    assert {str(first(POLICY, "retry-me")) for _ in range(50)} == {str(first(POLICY, "retry-me"))}
    assert draw("a", "b") == draw("a", "b") and draw("a", "b") != draw("a", "c")


def test_a_sticky_key_stays_on_one_target_whatever_its_request_ids() -> None:
    sticky = RoutingPolicy("clf", POLICY.split, sticky="key")
    for key in ("7", "8", "9", "10"):
        assert len({str(first(sticky, f"req-{i}", key)) for i in range(100)}) == 1
    # Keys still spread by the weights.
    keys = Counter(str(first(sticky, "same", str(k))) for k in range(2000))
    assert 0.08 <= keys["clf@candidate"] / 2000 <= 0.12
    # Without a key (auth off) the request id decides.
    assert len({str(first(sticky, f"req-{i}", None)) for i in range(100)}) == 2


def test_after_the_drawn_target_come_the_others_heaviest_first_and_no_zero_weight() -> None:
    policy = RoutingPolicy("clf", (("1", 5), ("2", 0), ("3", 60), ("@canary", 35)))
    for i in range(200):
        order = [str(r) for r in targets(policy, f"r{i}", None)]
        assert sorted(order) == ["clf:1", "clf:3", "clf@canary"]
        rest = [r for r in ["clf:3", "clf@canary", "clf:1"] if r != order[0]]
        assert order[1:] == rest


def test_a_shadow_fraction_mirrors_that_share_of_requests() -> None:
    policy = RoutingPolicy("clf", POLICY.split, shadow=Shadow(3, 0.2))
    share = sum(mirrored(policy, f"req-{i}") for i in range(2000)) / 2000
    assert 0.17 <= share <= 0.23
    assert not any(mirrored(POLICY, f"req-{i}") for i in range(100))


def test_the_router_caches_policies_until_the_registry_changes(
    registry: Registry, hf_dir: Path
) -> None:
    registry.push(hf_dir, "clf", task="text-classification")
    router = Router(registry)

    async def main() -> None:
        assert await router.policy("clf") is None
        set_routing(registry.db, "clf", {"split": {"1": 1}})
        assert await router.policy("clf") is None  # cached until told
        router.forget()
        policy = await router.policy("clf")
        assert policy is not None and policy.split == (("1", 1),)

    asyncio.run(main())
