"""Router: the version a request that names a model alone gets, under its routing policy.

Policies live in the registry (``registry.routing``); the router keeps each
model's policy (or the fact that it has none) in memory, so a request reads no
database, and drops them whenever the registry changes (the ``registry`` change
epoch, as for resolved references).

**Which target.** A draw in [0, 1) from a hash (BLAKE2b) of the request id —
or, with ``sticky: "key"``, of the API key's id — picks a target by the
cumulative weights. The same request id always lands on the same target, and
so does every request of a sticky key, on every instance, with no state shared
between them; over many ids the shares approach the weights. A target that no
longer resolves (its alias or version was deleted) is skipped for the next by
weight.

**Shadow.** A second, independent draw from the request id decides whether a
request is also mirrored to the shadow version (``ShadowMirror`` runs it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import anyio.to_thread

from maas.registry.refs import ModelRef
from maas.registry.routing import RoutingPolicy
from maas.registry.store import Registry

_SCALE = float(1 << 64)


def draw(*parts: str) -> float:
    """A number in [0, 1) that depends only on ``parts`` (uniform over distinct inputs)."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def targets(policy: RoutingPolicy, request_id: str, key_id: str | None) -> Iterator[ModelRef]:
    """The policy's targets for one request: the one drawn first, then the rest by weight."""
    refs = [(ref, weight) for ref, weight in policy.refs() if weight > 0]
    seed = f"key:{key_id}" if policy.sticky == "key" and key_id is not None else request_id
    point = draw(policy.model, "split", seed) * sum(weight for _, weight in refs)
    chosen = len(refs) - 1
    for index, (_, weight) in enumerate(refs):
        if point < weight:
            chosen = index
            break
        point -= weight
    yield refs[chosen][0]
    rest = sorted((r for i, r in enumerate(refs) if i != chosen), key=lambda r: -r[1])
    for ref, _ in rest:
        yield ref


def mirrored(policy: RoutingPolicy, request_id: str) -> bool:
    """Whether this request is also sent to the policy's shadow version."""
    shadow = policy.shadow
    return shadow is not None and draw(policy.model, "shadow", request_id) < shadow.fraction


class Router:
    """Each model's routing policy, cached; see the module docstring."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._policies: dict[str, RoutingPolicy | None] = {}
        self._forgotten = 0

    async def policy(self, model: str) -> RoutingPolicy | None:
        if model in self._policies:
            return self._policies[model]
        forgotten = self._forgotten
        policy = await anyio.to_thread.run_sync(self._registry.get_routing, model)
        if forgotten == self._forgotten:  # not read across a change
            if len(self._policies) > 4096:
                self._policies = {}
            self._policies[model] = policy
        return policy

    def forget(self) -> None:
        """Drop every cached policy (the registry changed); safe from any thread."""
        self._forgotten += 1
        self._policies = {}
