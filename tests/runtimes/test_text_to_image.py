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

from maas.errors import InvalidRequestError
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
