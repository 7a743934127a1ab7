"""Speech in and out on the data plane: transcription, translation and speech synthesis.

The routes (``api/audio.py``) hand these functions what they parsed; here the
model is resolved (routing policies apply, as for every task), the audio is
decoded off the event loop, cut into Whisper's 30 s windows, and the windows go
through the version's batcher as the items of one request, so a long file's
windows and the short files of concurrent callers share batches. The caller's
and the model's PII policy applies to transcripts (text outputs) and to the text
a model is asked to speak (a text input).

Usage units: ``RequestContext.audio_seconds`` (audio heard or spoken) and
``completion_tokens`` (transcript tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio.to_thread
import numpy as np

from maas.errors import InvalidRequestError
from maas.registry.schemas import VersionInfo
from maas.runtimes.audio import AudioError, DecodedAudio, decode
from maas.runtimes.speech_recognition import Segment, SpeechChunk, Transcribed, chunk_audio, stitch
from maas.runtimes.text_to_speech import SpeechInput, Waveform
from maas.security.pii import apply_output
from maas.serving.context import RequestContext
from maas.serving.dataplane import DataPlane

ASR_TASK = "automatic-speech-recognition"
TTS_TASK = "text-to-speech"


@dataclass(frozen=True, slots=True)
class TranscriptionRequest:
    audio: bytes  # the uploaded file, any container PyAV reads
    translate: bool = False  # to English (``/v1/audio/translations``)
    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    timestamps: bool = False  # segments with times are wanted (srt, vtt, verbose_json)


@dataclass(frozen=True, slots=True)
class Transcript:
    version: VersionInfo
    text: str
    language: str | None  # as OpenAI names it ("english"); None when not known
    duration: float  # seconds of audio
    segments: list[Segment]  # absolute times, covering the audio in order
    tokens: int


@dataclass(frozen=True, slots=True)
class Speech:
    version: VersionInfo
    waveform: Waveform


def _expect_task(version: VersionInfo, task: str) -> None:
    if version.task != task:
        raise InvalidRequestError(
            f"model {version.model} is for {version.task}, not {task}", param="model"
        )


async def decode_upload(data: bytes, max_seconds: float) -> DecodedAudio:
    """The upload as 16 kHz mono samples (decoded on a worker thread), or a 400 naming why."""
    try:
        return await anyio.to_thread.run_sync(lambda: decode(data, max_seconds=max_seconds))
    except AudioError as exc:
        raise InvalidRequestError(str(exc), param="file") from exc


async def transcribe(
    dataplane: DataPlane,
    ctx: RequestContext,
    ref: str,
    request: TranscriptionRequest,
    *,
    max_seconds: float,
) -> Transcript:
    """Transcribe (or translate to English) one audio file with a speech recognition model."""
    route = "translations" if request.translate else "transcriptions"
    with dataplane.track(ctx, route, ref) as tracking:
        version, _ = await dataplane.serving_version(tracking, ref)  # not mirrored
        tracking.version = str(version.version)
        _expect_task(version, ASR_TASK)
        audio = await decode_upload(request.audio, max_seconds)
        windows = chunk_audio(audio.samples)
        # Several windows are joined by their segments' times: ask for them.
        timestamps = request.timestamps or len(windows) > 1
        items = [
            SpeechChunk(
                np.ascontiguousarray(audio.samples[w.offset : w.offset + w.length]),
                task="translate" if request.translate else "transcribe",
                language=request.language,
                prompt=request.prompt,
                temperature=request.temperature,
                timestamps=timestamps,
            )
            for w in windows
        ]
        tracking.items = len(items)
        tracking.audio_seconds = audio.seconds
        answers: list[Transcribed] = await dataplane.host.predict(version, items, tracking.cost)
        tokens = sum(a.tokens for a in answers)
        tracking.completion_tokens = tokens
        if len(answers) == 1 and not timestamps:
            text = answers[0].text
            segments = [Segment(0.0, round(audio.seconds, 3), text, [])]
        else:
            segments = stitch(windows, answers)
            text = " ".join(s.text for s in segments if s.text)
        policy = dataplane.pii_policy(version, ctx.pii)
        if policy.applies_to_output:
            text = apply_output(policy, text)
            segments = [Segment(s.start, s.end, apply_output(policy, s.text), []) for s in segments]
        language = next((a.language for a in answers if a.language), None)
        return Transcript(version, text, language, audio.seconds, segments, tokens)


async def speak(
    dataplane: DataPlane,
    ctx: RequestContext,
    ref: str,
    text: str,
    *,
    voice: str,
    speed: float,
) -> Speech:
    """Synthesize ``text`` with a text-to-speech model: one waveform."""
    with dataplane.track(ctx, "speech", ref) as tracking:
        version, _ = await dataplane.serving_version(tracking, ref)
        tracking.version = str(version.version)
        _expect_task(version, TTS_TASK)
        (screened,) = await dataplane.screen(version, [text], ctx.pii)
        tracking.items = 1
        waveforms: list[Waveform] = await dataplane.host.predict(
            version, [SpeechInput(screened, voice=voice, speed=speed)], tracking.cost
        )
        waveform = waveforms[0]
        tracking.audio_seconds = waveform.seconds
        return Speech(version, waveform)
