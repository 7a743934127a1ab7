"""``/v1/images/generations``: OpenAI's image generation, on diffusers models.

Images come back inline (``b64_json``); maas keeps no files to link to. maas
extensions, sent with the openai client's ``extra_body``: ``seed`` (the same
seed gives the same PNG bytes; image ``i`` of ``n`` uses ``seed + i``),
``steps`` and ``guidance_scale``, ``negative_prompt``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from maas.api.bodies import JsonBodyRoute
from maas.api.deps import CtxDep, DataPlaneDep, SettingsDep, get_admission, require_key
from maas.api.feedback import answer_headers
from maas.api.schemas.media import ImagesRequest
from maas.errors import InvalidRequestError, PayloadTooLargeError
from maas.registry.refs import model_name
from maas.serving.images import ImageRequest, generate_images

router = APIRouter(
    prefix="/v1/images",
    tags=["openai"],
    dependencies=[Depends(require_key)],
    route_class=JsonBodyRoute,
)

CLIENT_CLOSED = 499
T = TypeVar("T")


async def _disconnected(request: Request) -> None:
    """Return once the client has closed the connection (its body was read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T | None:
    """``work``'s result, or None when the client went away first: ``work`` is cancelled.

    Image generation runs for seconds to minutes on a CPU, and a client that gave up
    (a timeout, a closed tab) would otherwise keep the model busy for nobody.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this request itself was cancelled (a time limit, shutdown)
        watcher.cancel()
        task.cancel()
        raise
    watcher.cancel()
    if not task.done():  # the client went away first
        task.cancel()  # its own handler tells the model host (serving/images.py)
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    return task.result()


_SIZE = re.compile(r"^([1-9][0-9]{0,4})x([1-9][0-9]{0,4})$")


def parse_size(size: str, max_pixels: int) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` -> (width, height); ``auto`` -> (0, 0), the model's own size."""
    if size == "auto":
        return 0, 0
    match = _SIZE.match(size)
    if match is None:
        raise InvalidRequestError(
            f"size must be WIDTHxHEIGHT (e.g. 512x512) or auto, not {size[:20]!r}", param="size"
        )
    width, height = int(match.group(1)), int(match.group(2))
    if width * height > max_pixels:
        raise PayloadTooLargeError(
            f"size {width}x{height} is more than {max_pixels} pixels (MAAS_MAX_IMAGE_PIXELS)"
        )
    return width, height


@router.post("/generations", response_model=None)
async def create_images(
    request: Request,
    body: ImagesRequest,
    ctx: CtxDep,
    dataplane: DataPlaneDep,
    settings: SettingsDep,
) -> Response:
    """Images from a text prompt, as base64 PNG."""
    if not body.prompt.strip():
        raise InvalidRequestError("prompt must not be empty", param="prompt")
    width, height = parse_size(body.size, settings.max_image_pixels)
    ctx.ensure_model(model_name(body.model))
    key = ctx.admitted.key
    if settings.images_per_minute and key is not None:
        # Counted before any compute: a refused request makes no image.
        await get_admission(request).limiter.acquire_units(
            key.id, "images", settings.images_per_minute, body.n
        )
    result = await until_disconnected(
        request,
        generate_images(
            dataplane,
            ctx,
            body.model,
            ImageRequest(
                body.prompt,
                n=body.n,
                width=width,
                height=height,
                steps=body.steps,
                guidance=body.guidance_scale,
                seed=body.seed,
                negative_prompt=body.negative_prompt,
            ),
        ),
    )
    if result is None:  # nobody is there to answer; 499 (nginx's) is what usage records
        return Response(status_code=CLIENT_CLOSED)
    data: list[dict[str, Any]] = [
        {"b64_json": base64.b64encode(image.png).decode(), "seed": image.seed}
        for image in result.images
    ]
    first = result.images[0] if result.images else None
    payload = {
        "created": int(time.time()),
        "data": data,
        "model": result.version.ref,
        "size": f"{first.width}x{first.height}" if first else body.size,
        "output_format": "png",
        "usage": {"images": len(data), "steps": sum(i.steps for i in result.images)},
    }
    return JSONResponse(payload, headers=answer_headers(ctx))
