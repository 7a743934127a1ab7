"""The speech and image items and answers cross the engine wire unchanged."""

from __future__ import annotations

import numpy as np

from maas.runtimes.speech_recognition import Segment, SpeechChunk, Transcribed
from maas.runtimes.text_to_image import GeneratedImage, ImagePrompt
from maas.runtimes.text_to_speech import SpeechInput, Waveform
from maas.serving.engine.wire import packb, unpackb


def test_speech_chunks_and_transcripts_round_trip() -> None:
    chunk = SpeechChunk(np.arange(16, dtype=np.float32), task="translate", prompt="hi")
    back = unpackb(packb([chunk]))[0]
    assert isinstance(back, SpeechChunk) and back.task == "translate" and back.prompt == "hi"
    np.testing.assert_array_equal(back.audio, chunk.audio)
    answer = Transcribed("a b", [Segment(0.0, 1.5, "a b", [1, 2])], "en", 2)
    assert unpackb(packb(answer)) == answer


def test_speech_and_images_round_trip() -> None:
    assert unpackb(packb(SpeechInput("hello", voice="echo", speed=1.5))) == SpeechInput(
        "hello", voice="echo", speed=1.5
    )
    wave = unpackb(packb(Waveform(np.ones(4, dtype=np.float32), 16_000)))
    assert wave.sample_rate == 16_000 and wave.samples.tolist() == [1.0] * 4
    prompt = ImagePrompt("a cat", seed=2**62, steps=3)
    assert unpackb(packb(prompt)) == prompt
    image = GeneratedImage(b"\x89PNG", 5, 16, 16, 3)
    assert unpackb(packb(image)) == image
