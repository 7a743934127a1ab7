"""The Whisper runtime and audio decoding, with a tiny random Whisper and real speech."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from maas.errors import InvalidRequestError
from maas.registry.formats import detect_format
from maas.runtimes.audio import SAMPLE_RATE, AudioError, decode, encode_blocks
from maas.runtimes.base import RuntimeContext
from maas.runtimes.registry import runtime_class
from maas.runtimes.speech_recognition import (
    Segment,
    SpeechChunk,
    Transcribed,
    WhisperSpeechRecognitionRuntime,
    chunk_audio,
    stitch,
)
from tests.media_models import built, convert, speak, version_info

SENTENCE = "the quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built("whisper", tmp_path_factory)


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speak(SENTENCE, tmp_path_factory.mktemp("speech") / "fox.wav")


@pytest.fixture(scope="module")
def runtime(whisper_dir: Path) -> Iterator[WhisperSpeechRecognitionRuntime]:
    executor = ThreadPoolExecutor(1)
    context = RuntimeContext(
        model_dir=whisper_dir,
        version=version_info(whisper_dir, "automatic-speech-recognition"),
        executor=executor,
    )
    rt = WhisperSpeechRecognitionRuntime(context)
    asyncio.run(rt.load())
    yield rt
    asyncio.run(rt.unload())
    executor.shutdown()


def _run(rt: WhisperSpeechRecognitionRuntime, batch: list[Any]) -> list[Any]:
    return list(asyncio.run(rt.predict(batch)))


def test_a_whisper_directory_is_detected_as_speech_recognition(whisper_dir: Path) -> None:
    detected = detect_format(whisper_dir)
    assert (detected.format, detected.task_hint) == ("hf", "automatic-speech-recognition")
    assert runtime_class("automatic-speech-recognition", "hf") is WhisperSpeechRecognitionRuntime


def test_wav_decodes_to_the_samples_soundfile_reads(speech_wav: Path) -> None:
    expected, rate = soundfile.read(speech_wav, dtype="float32")
    assert rate == SAMPLE_RATE
    decoded = decode(speech_wav.read_bytes(), max_seconds=60)
    assert decoded.samples.shape == expected.shape
    np.testing.assert_allclose(decoded.samples, expected, atol=1e-4)


@pytest.mark.parametrize("suffix", [".ogg", ".mp3", ".flac"])
def test_compressed_formats_decode_to_the_same_speech(speech_wav: Path, suffix: str) -> None:
    original = decode(speech_wav.read_bytes(), max_seconds=60).samples
    other = decode(convert(speech_wav, suffix).read_bytes(), max_seconds=60).samples
    assert abs(other.shape[0] - original.shape[0]) < 0.1 * SAMPLE_RATE  # codec padding only
    # Align (mp3 adds an encoder delay) and compare the waveforms' shape.
    n = min(other.shape[0], original.shape[0])
    best = (
        max(
            np.corrcoef(original[: n - 2000], other[lag : lag + n - 2000])[0, 1]
            for lag in range(0, 2000, 1)
            if lag + n - 2000 <= other.shape[0]
        )
        if suffix == ".mp3"
        else np.corrcoef(original[:n], other[:n])[0, 1]
    )
    assert best > 0.9


def test_a_stereo_44k_file_is_resampled_to_16k_mono(tmp_path: Path) -> None:
    seconds = 1.5
    t = np.arange(int(44_100 * seconds)) / 44_100
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)], axis=1) * 0.3
    path = tmp_path / "stereo.wav"
    soundfile.write(path, stereo.astype(np.float32), 44_100)
    decoded = decode(path.read_bytes(), max_seconds=60)
    assert decoded.samples.ndim == 1
    assert abs(decoded.seconds - seconds) < 0.01


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        (b"this is not audio at all" * 50, "not audio"),
        (b"RIFF\x00\x00", "not audio"),
    ],
)
def test_bad_audio_raises_a_sentence_naming_the_problem(data: bytes, words: str) -> None:
    with pytest.raises(AudioError, match=words):
        decode(data, max_seconds=60)


def test_an_image_is_refused_for_holding_no_audio_stream() -> None:
    import io

    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    with pytest.raises(AudioError, match="no audio stream"):
        decode(png.getvalue(), max_seconds=60)


def test_audio_longer_than_the_limit_is_refused(speech_wav: Path) -> None:
    with pytest.raises(AudioError, match="longer than 1 s"):
        decode(speech_wav.read_bytes(), max_seconds=1)


def test_opus_streams_in_blocks_and_any_rate_is_resampled_for_it(tmp_path: Path) -> None:
    wave = (np.sin(np.arange(22_050 * 3) / 10) * 0.5).astype(np.float32)  # 3 s at 22.05 kHz
    blocks = list(encode_blocks(wave, 22_050, "opus"))
    assert len([b for b in blocks if b]) > 2  # sent as it was encoded, not at the end
    path = tmp_path / "out.opus"
    path.write_bytes(b"".join(blocks))
    data, rate = soundfile.read(path, dtype="float32")
    assert rate == 48_000
    assert abs(data.shape[0] / rate - 3.0) < 0.1


def test_mp3_of_a_rate_mpeg_lacks_is_resampled(tmp_path: Path) -> None:
    wave = (np.sin(np.arange(20_000 * 2) / 10) * 0.5).astype(np.float32)  # 2 s at 20 kHz
    path = tmp_path / "out.mp3"
    path.write_bytes(b"".join(encode_blocks(wave, 20_000, "mp3")))
    data, rate = soundfile.read(path, dtype="float32")
    assert rate == 48_000 and abs(data.shape[0] / rate - 2.0) < 0.1


def test_a_wav_written_by_encode_blocks_reads_back(tmp_path: Path) -> None:
    wave = (np.sin(np.arange(24_000) / 10) * 0.5).astype(np.float32)
    for fmt in ("wav", "flac", "mp3", "opus"):
        path = tmp_path / f"out.{fmt}"
        path.write_bytes(b"".join(encode_blocks(wave, 24_000, fmt)))
        data, rate = soundfile.read(path, dtype="float32")
        assert rate in (24_000, 48_000), fmt  # opus may decode at 48 kHz
        assert abs(data.shape[0] / rate - 1.0) < 0.1, fmt


def test_the_runtime_transcribes_as_transformers_pipeline_does(
    runtime: WhisperSpeechRecognitionRuntime, whisper_dir: Path, speech_wav: Path
) -> None:
    from transformers import pipeline

    audio = decode(speech_wav.read_bytes(), max_seconds=60).samples
    # Greedy, as maas decodes at temperature 0 (the pipeline's own default is 5 beams).
    expected = pipeline("automatic-speech-recognition", model=str(whisper_dir))(
        {"raw": audio, "sampling_rate": SAMPLE_RATE}, generate_kwargs={"num_beams": 1}
    )["text"]
    (answer,) = _run(runtime, [SpeechChunk(audio)])
    assert isinstance(answer, Transcribed)
    assert answer.text == expected.strip()
    assert answer.text  # the tiny model says something: a test of equal empty strings is none


def test_different_audio_gives_a_different_transcript(
    runtime: WhisperSpeechRecognitionRuntime, speech_wav: Path
) -> None:
    audio = decode(speech_wav.read_bytes(), max_seconds=60).samples
    first, second = _run(runtime, [SpeechChunk(audio), SpeechChunk(audio[:SAMPLE_RATE])])
    assert first.text != second.text


def test_a_batch_answers_each_item_as_it_would_alone(
    runtime: WhisperSpeechRecognitionRuntime, speech_wav: Path
) -> None:
    audio = decode(speech_wav.read_bytes(), max_seconds=60).samples
    parts = [audio, audio[:SAMPLE_RATE], audio[SAMPLE_RATE:]]
    alone = [_run(runtime, [SpeechChunk(p)])[0].text for p in parts]
    together = [a.text for a in _run(runtime, [SpeechChunk(p) for p in parts])]
    assert together == alone


def test_timestamps_make_ordered_segments_inside_the_chunk(
    runtime: WhisperSpeechRecognitionRuntime, speech_wav: Path
) -> None:
    audio = decode(speech_wav.read_bytes(), max_seconds=60).samples
    (answer,) = _run(runtime, [SpeechChunk(audio, timestamps=True)])
    assert answer.segments
    for seg in answer.segments:
        assert 0.0 <= seg.start <= seg.end <= 30.0


def test_an_unknown_language_fails_only_its_item(
    runtime: WhisperSpeechRecognitionRuntime, speech_wav: Path
) -> None:
    audio = decode(speech_wav.read_bytes(), max_seconds=60).samples
    bad, good = _run(runtime, [SpeechChunk(audio, language="xx"), SpeechChunk(audio)])
    assert isinstance(bad, InvalidRequestError) and "language 'xx'" in bad.message
    assert isinstance(good, Transcribed)


def test_translation_and_a_language_decode(
    runtime: WhisperSpeechRecognitionRuntime, speech_wav: Path
) -> None:
    audio = decode(speech_wav.read_bytes(), max_seconds=60).samples
    translated, french = _run(
        runtime, [SpeechChunk(audio, task="translate"), SpeechChunk(audio, language="fr")]
    )
    assert isinstance(translated, Transcribed) and isinstance(french, Transcribed)
    assert french.language == "french"  # as OpenAI's verbose_json names it


def test_chunks_of_a_long_recording_overlap_and_own_every_instant() -> None:
    samples = np.zeros(int(180 * SAMPLE_RATE), dtype=np.float32)
    windows = chunk_audio(samples)
    assert len(windows) == 7  # 30 s windows every 25 s
    assert windows[0].keep_from == 0.0 and windows[-1].keep_to == 180.0
    for before, after in itertools.pairwise(windows):
        assert before.keep_to == after.keep_from
        assert after.offset < before.offset + before.length  # they overlap
    assert all(w.length <= 30 * SAMPLE_RATE for w in windows)


def test_stitched_segments_tile_the_audio_in_order() -> None:
    samples = np.zeros(int(70 * SAMPLE_RATE), dtype=np.float32)
    windows = chunk_audio(samples)
    answers = [
        Transcribed("a b", [Segment(1.0, 4.0, "a"), Segment(20.0, 29.0, "b")], "en", 2),
        Transcribed(
            "c", [Segment(0.0, 2.0, "dropped: in the overlap"), Segment(8, 12, "c")], None, 1
        ),
        Transcribed("", [Segment(0.0, 20.0, "")], None, 0),
    ]
    segments = stitch(windows, answers)
    assert segments[0].start == 0.0 and segments[-1].end == 70.0
    for before, after in itertools.pairwise(segments):
        assert before.end == after.start
        assert before.start <= before.end
    assert "dropped: in the overlap" not in [s.text for s in segments]


def test_webm_opus_from_a_browser_recorder_decodes(speech_wav: Path) -> None:
    """Browsers' MediaRecorder uploads WebM with Opus at 48 kHz: encoded here with PyAV."""
    import io

    import av

    original = decode(speech_wav.read_bytes(), max_seconds=60).samples
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="webm") as container:
        stream = container.add_stream("libopus", rate=48_000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(original.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for resampled in av.AudioResampler(format="s16", layout="mono", rate=48_000).resample(
            frame
        ):
            for packet in stream.encode(resampled):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    decoded = decode(buffer.getvalue(), max_seconds=60)
    assert decoded.source_format == "matroska"
    assert abs(decoded.seconds - original.shape[0] / SAMPLE_RATE) < 0.05


def test_a_mono_16k_wav_and_a_stereo_one_decode_to_the_same_speech(
    speech_wav: Path, tmp_path: Path
) -> None:
    """The mono 16 kHz fast path (libsndfile) and PyAV's path agree."""
    mono, rate = soundfile.read(speech_wav, dtype="float32")
    stereo = tmp_path / "stereo.wav"
    soundfile.write(stereo, np.stack([mono, mono], axis=1), rate, subtype="FLOAT")
    fast = decode(speech_wav.read_bytes(), max_seconds=60)
    slow = decode(stereo.read_bytes(), max_seconds=60)
    assert (fast.source_format, slow.source_format) == ("wav", "wav")
    assert fast.samples.shape == slow.samples.shape
    # PyAV mixes two equal channels down to the same samples (within rounding).
    np.testing.assert_allclose(slow.samples, fast.samples, atol=0.02)


def test_a_float_wav_holding_nan_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nan.wav"
    soundfile.write(path, np.array([0.0, np.nan, 0.1], dtype=np.float32), 16_000, subtype="FLOAT")
    with pytest.raises(AudioError, match="not finite"):
        decode(path.read_bytes(), max_seconds=60)


def test_a_prompt_and_sampling_decode(
    runtime: WhisperSpeechRecognitionRuntime, speech_wav: Path
) -> None:
    audio = decode(speech_wav.read_bytes(), max_seconds=60).samples
    prompted, sampled = _run(
        runtime,
        [SpeechChunk(audio, prompt="earlier words"), SpeechChunk(audio, temperature=0.8)],
    )
    assert isinstance(prompted, Transcribed) and prompted.text
    assert "earlier words" not in prompted.text  # the prompt conditions, it is not echoed
    assert isinstance(sampled, Transcribed) and sampled.text
