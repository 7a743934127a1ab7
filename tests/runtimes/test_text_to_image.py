"""DiffusersTextToImageRuntime with a tiny random Stable Diffusion pipeline."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from maas.errors import InvalidRequestError, UnavailableError
from maas.registry.formats import detect_format
from maas.runtimes.base import RuntimeContext
from maas.runtimes.text_to_image import DiffusersTextToImageRuntime, GeneratedImage, ImagePrompt
from tests.media_models import built, version_info


@pytest.fixture(scope="module")
def diffusion_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built("diffusion", tmp_path_factory)


@pytest.fixture(scope="module")
def runtime(diffusion_dir: Path) -> Iterator[DiffusersTextToImageRuntime]:
    executor = ThreadPoolExecutor(1)
    rt = DiffusersTextToImageRuntime(
        RuntimeContext(
            model_dir=diffusion_dir,
            version=version_info(diffusion_dir, "text-to-image", "diffusers"),
            executor=executor,
        )
    )
    asyncio.run(rt.load())
    yield rt
    asyncio.run(rt.unload())
    executor.shutdown()


def _run(rt: DiffusersTextToImageRuntime, batch: list[Any]) -> list[Any]:
    return list(asyncio.run(rt.predict(batch)))


def test_a_diffusers_directory_is_detected_as_text_to_image(diffusion_dir: Path) -> None:
    detected = detect_format(diffusion_dir)
    assert (detected.format, detected.task_hint) == ("diffusers", "text-to-image")
    assert detected.metadata["pipeline"] == "StableDiffusionPipeline"
    assert "unet" in detected.metadata["components"]


def test_a_seed_gives_the_same_png_alone_or_batched(runtime: DiffusersTextToImageRuntime) -> None:
    (alone,) = _run(runtime, [ImagePrompt("a red cat", seed=7, steps=2)])
    batched = _run(
        runtime,
        [ImagePrompt("a blue dog", seed=8, steps=2), ImagePrompt("a red cat", seed=7, steps=2)],
    )
    assert isinstance(alone, GeneratedImage)
    assert batched[1].png == alone.png
    assert batched[0].png != alone.png
    image = Image.open(io.BytesIO(alone.png))
    assert image.format == "PNG" and image.size == runtime.native_size


def test_another_size_is_made_at_that_size(runtime: DiffusersTextToImageRuntime) -> None:
    (image,) = _run(runtime, [ImagePrompt("a cat", seed=1, steps=1, width=32, height=24)])
    assert Image.open(io.BytesIO(image.png)).size == (32, 24)


def test_bad_items_fail_alone(runtime: DiffusersTextToImageRuntime) -> None:
    empty, odd, good = _run(
        runtime,
        [
            ImagePrompt(" ", seed=1, steps=1),
            ImagePrompt("a cat", seed=1, steps=1, width=33, height=32),
            ImagePrompt("a cat", seed=1, steps=1),
        ],
    )
    assert isinstance(empty, InvalidRequestError) and "prompt" in empty.message
    assert isinstance(odd, InvalidRequestError) and "multiples" in odd.message
    assert isinstance(good, GeneratedImage)


def test_a_cancelled_request_stops_after_the_current_step(
    runtime: DiffusersTextToImageRuntime,
) -> None:
    steps_seen: list[int] = []

    def on_step(done: int, steps: int) -> None:
        steps_seen.append(done)
        if done == 2:  # the client goes away while step 2 runs
            runtime.cancel("gone")

    runtime.on_step = on_step
    try:
        (answer,) = _run(runtime, [ImagePrompt("a cat", seed=1, steps=40, request="gone")])
    finally:
        runtime.on_step = None
    assert isinstance(answer, UnavailableError) and "cancelled" in answer.message
    assert steps_seen == [1, 2]  # 38 steps never ran


def test_cancelled_items_are_not_started_and_others_are_served(
    runtime: DiffusersTextToImageRuntime,
) -> None:
    runtime.cancel("left")
    left, stayed = _run(
        runtime,
        [
            ImagePrompt("a cat", seed=1, steps=1, request="left"),
            ImagePrompt("a cat", seed=1, steps=1, request="stayed"),
        ],
    )
    assert isinstance(left, UnavailableError)
    assert isinstance(stayed, GeneratedImage)
