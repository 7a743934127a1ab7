"""Traffic: which version answers a request, and the shadow it is also mirrored to.

Composed into the ``DataPlane``, which hands it each request's reference and, once
answered, the items and answers to mirror. Placement:

* ``model:3`` and ``model@alias`` name their version; so does a plain name with
  ``x-maas-version`` (``ctx.pinned_version``);
* any other plain name goes through the model's routing policy, if it has one
  (``serving.routing``: a weighted draw by the request id — ``x-request-id``, else
  the prediction id — or, sticky, by the API key); a target that no longer resolves
  is skipped for the next by weight;
* with a policy's shadow, a second draw decides whether the request is mirrored; a
  request is never mirrored to the version that answered it (a rollout's candidate
  answering its share), nor to a version of another task.

Mirrors run in ``serving.shadow.ShadowMirror`` (bounded, off the caller's path, never
metered); each compared mirror is recorded for rollouts (``ComparisonRecorder``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from maas.errors import NotFoundError
from maas.registry.refs import ModelRef
from maas.registry.schemas import VersionInfo
from maas.registry.store import Registry
from maas.serving.batching import RequestCost
from maas.serving.context import RequestContext
from maas.serving.hosts import ModelHost
from maas.serving.metrics import ServingMetrics
from maas.serving.routing import Router, mirrored, targets
from maas.serving.shadow import ComparisonRecorder, Record, ShadowMirror

Resolve = Callable[[ModelRef], Awaitable[VersionInfo]]


class Traffic:
    def __init__(
        self,
        registry: Registry,
        host: ModelHost,
        metrics: ServingMetrics,
        *,
        resolve: Resolve,
        observe: Record | None = None,
    ) -> None:
        self._host = host
        self._resolve = resolve
        self._router = Router(registry)
        self._comparisons = ComparisonRecorder(lambda: registry.db)
        self.shadow = ShadowMirror(metrics, record=observe, compared=self._comparisons)

    async def place(self, ctx: RequestContext, ref: str) -> tuple[VersionInfo, VersionInfo | None]:
        """The version that answers ``ref`` for this request, and the shadow it is mirrored
        to (None: not mirrored)."""
        parsed = ModelRef.parse(ref)
        if parsed.version is not None or parsed.alias is not None:
            return await self._resolve(parsed), None
        if ctx.pinned_version is not None:
            return await self._resolve(ModelRef(parsed.name, version=ctx.pinned_version)), None
        policy = await self._router.policy(parsed.name)
        if policy is None:
            return await self._resolve(parsed), None
        request_id = ctx.request_id or ctx.prediction_id
        key = ctx.admitted.key
        version: VersionInfo | None = None
        for target in targets(policy, request_id, str(key.id) if key is not None else None):
            try:
                version = await self._resolve(target)
                break
            except NotFoundError:  # its alias or version went away since the policy was set
                continue
        if version is None:
            version = await self._resolve(parsed)
        shadow: VersionInfo | None = None
        if policy.shadow is not None and mirrored(policy, request_id):
            try:
                shadow = await self._resolve(ModelRef(parsed.name, version=policy.shadow.version))
            except NotFoundError:
                shadow = None
            if shadow is not None and (
                shadow.task != version.task or shadow.version == version.version
            ):
                shadow = None
        return version, shadow

    def mirror(
        self,
        shadow: VersionInfo | None,
        served: VersionInfo,
        items: Sequence[Any],
        answered: Sequence[Any],
    ) -> None:
        """Queue a copy of an answered request for ``shadow`` (never awaited)."""
        if shadow is None:
            return
        copied = list(items)

        async def run() -> list[Any]:
            # Not the caller's cost: mirrors are metered as shadow traffic only.
            results: list[Any] = await self._host.predict(shadow, copied, RequestCost())
            return results

        self.shadow.offer(shadow, copied, answered, run, served)

    def mirror_tensors(
        self,
        shadow: VersionInfo | None,
        served: VersionInfo,
        inputs: dict[str, np.ndarray],
        answered: dict[str, np.ndarray],
    ) -> None:
        """``mirror`` for a tensor model: one request of named tensors."""
        if shadow is None:
            return

        async def run() -> list[dict[str, np.ndarray]]:
            return [await self._host.predict_tensors(shadow, inputs, RequestCost())]

        self.shadow.offer(shadow, [inputs], [answered], run, served)

    def forget(self) -> None:
        """Drop every cached routing policy (the registry changed); safe from any thread."""
        self._router.forget()

    async def close(self) -> None:
        await self.shadow.close()
        await self._comparisons.close()
