"""Explanations of single predictions, transport-agnostic like the DataPlane they use.

Explanations bypass the batcher: one Integrated Gradients run is already a
batch of ``steps`` forwards and backwards, and it must not be merged with
ordinary inference requests.
"""

from __future__ import annotations

from maas.errors import InvalidRequestError
from maas.registry.schemas import VersionInfo
from maas.runtimes.explain import Explanation
from maas.serving.context import RequestContext
from maas.serving.dataplane import DataPlane

EXPLAINABLE_TASK = "text-classification"


async def explain_text(
    dataplane: DataPlane,
    ctx: RequestContext,
    ref: str,
    text: str,
    *,
    target: str | int | None,
    steps: int,
) -> tuple[VersionInfo, Explanation]:
    """Token attributions for ``ref``'s prediction (or ``target``) on ``text``."""
    with dataplane.track(ctx, "explain", ref) as tracking:
        version = await dataplane.resolve(ref)
        tracking.version = str(version.version)
        if version.task != EXPLAINABLE_TASK:
            raise InvalidRequestError(
                f"model {version.model} is for {version.task}; explanations are available "
                f"for {EXPLAINABLE_TASK} models only",
                param="model",
            )
        (text,) = await dataplane.screen(version, [text], ctx.pii)
        tracking.items = 1
        explanation = await dataplane.host.explain(version, text, target=target, steps=steps)
        return version, explanation
