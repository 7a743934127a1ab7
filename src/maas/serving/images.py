"""Image generation on the data plane: one request of ``n`` images through the batcher.

Each of the ``n`` images is one batch item with its own seed (``seed``,
``seed + 1``, ... when the caller gives one, random otherwise), so the images
of concurrent requests of the same size and steps are denoised together. The
prompt is a text input: the caller's and the model's PII policy screens it.

A cancelled call (the route cancels it when the client disconnects) tells the
model host, which stops the work it can (``runtimes/text_to_image.py``).

Usage units: ``RequestContext.images``.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

import anyio

from maas.errors import InvalidRequestError
from maas.registry.schemas import VersionInfo
from maas.runtimes.text_to_image import GeneratedImage, ImagePrompt
from maas.serving.context import RequestContext
from maas.serving.dataplane import DataPlane

IMAGE_TASK = "text-to-image"
SEED_LIMIT = 2**63  # torch.Generator.manual_seed takes a 64-bit integer
CANCEL_TIMEOUT_SECONDS = 5.0  # telling the engine a request was cancelled


@dataclass(frozen=True, slots=True)
class ImageRequest:
    prompt: str
    n: int = 1
    width: int = 0  # 0: the model's native size
    height: int = 0
    steps: int = 25
    guidance: float = 7.5
    seed: int | None = None
    negative_prompt: str | None = None


@dataclass(frozen=True, slots=True)
class Images:
    version: VersionInfo
    images: list[GeneratedImage]


async def generate_images(
    dataplane: DataPlane, ctx: RequestContext, ref: str, request: ImageRequest
) -> Images:
    with dataplane.track(ctx, "images", ref) as tracking:
        version, _ = await dataplane.serving_version(tracking, ref)
        tracking.version = str(version.version)
        if version.task != IMAGE_TASK:
            raise InvalidRequestError(
                f"model {version.model} is for {version.task}, not {IMAGE_TASK}", param="model"
            )
        (prompt,) = await dataplane.screen(version, [request.prompt], ctx.pii)
        first = request.seed if request.seed is not None else secrets.randbelow(SEED_LIMIT)
        items = [
            ImagePrompt(
                prompt,
                seed=(first + i) % SEED_LIMIT,
                width=request.width,
                height=request.height,
                steps=request.steps,
                guidance=request.guidance,
                negative_prompt=request.negative_prompt,
                request=tracking.prediction_id,
            )
            for i in range(request.n)
        ]
        tracking.items = len(items)
        try:
            images: list[GeneratedImage] = await dataplane.host.predict(
                version, items, tracking.cost
            )
        except asyncio.CancelledError:
            # The caller went away: its queued images are dropped by the batcher (here)
            # or answered at once by the runtime (in an engine process), and a batch of
            # only its images stops after the current step.
            with anyio.move_on_after(CANCEL_TIMEOUT_SECONDS, shield=True):
                await dataplane.host.cancel(version, tracking.prediction_id)
            raise
        tracking.images = len(images)
        return Images(version, images)
