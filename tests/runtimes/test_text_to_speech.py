"""VitsTextToSpeechRuntime with a tiny random VITS."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from maas.errors import InvalidRequestError
from maas.registry.formats import detect_format
from maas.runtimes.base import RuntimeContext
from maas.runtimes.text_to_speech import SpeechInput, VitsTextToSpeechRuntime, Waveform
from tests.media_models import built, version_info


@pytest.fixture(scope="module")
def vits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built("vits", tmp_path_factory)


@pytest.fixture(scope="module")
def runtime(vits_dir: Path) -> Iterator[VitsTextToSpeechRuntime]:
    executor = ThreadPoolExecutor(1)
    rt = VitsTextToSpeechRuntime(
        RuntimeContext(
            model_dir=vits_dir, version=version_info(vits_dir, "text-to-speech"), executor=executor
        )
    )
    asyncio.run(rt.load())
    yield rt
    asyncio.run(rt.unload())
    executor.shutdown()


def _run(rt: VitsTextToSpeechRuntime, batch: list[Any]) -> list[Any]:
    return list(asyncio.run(rt.predict(batch)))


def test_a_vits_directory_is_detected_as_text_to_speech(vits_dir: Path) -> None:
    detected = detect_format(vits_dir)
    assert (detected.format, detected.task_hint) == ("hf", "text-to-speech")


def test_longer_text_makes_longer_speech_at_the_model_rate(
    runtime: VitsTextToSpeechRuntime,
) -> None:
    short, long = _run(runtime, [SpeechInput("hello"), SpeechInput("hello there, " * 6)])
    assert isinstance(short, Waveform) and isinstance(long, Waveform)
    assert short.sample_rate == long.sample_rate == 16_000
    assert 0 < short.seconds < long.seconds
    assert abs(long.samples).max() <= 1.0 + 1e-6


def test_a_batched_item_is_cut_to_its_own_length(runtime: VitsTextToSpeechRuntime) -> None:
    short, long = _run(runtime, [SpeechInput("a short one"), SpeechInput("a much longer one " * 5)])
    # Padded to the longest row in the forward; each answer keeps only its own samples.
    assert short.samples.shape[0] < long.samples.shape[0] / 2


def test_faster_speech_is_shorter(runtime: VitsTextToSpeechRuntime) -> None:
    normal, fast = _run(
        runtime, [SpeechInput("the same words " * 4), SpeechInput("the same words " * 4, speed=2.0)]
    )
    assert fast.seconds < normal.seconds


def test_empty_text_and_a_bad_speed_fail_only_their_items(runtime: VitsTextToSpeechRuntime) -> None:
    empty, slow, good = _run(
        runtime, [SpeechInput("   "), SpeechInput("hi", speed=9.0), SpeechInput("hi")]
    )
    assert isinstance(empty, InvalidRequestError) and "empty" in empty.message
    assert isinstance(slow, InvalidRequestError) and "speed" in slow.message
    assert isinstance(good, Waveform)
