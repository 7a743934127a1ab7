"""Audio in and out: decode an upload to 16 kHz mono, encode a waveform for a response.

Mono 16 kHz WAV and FLAC, what speech clients most often send, are read by
libsndfile as they are (no resampling to do). Everything else goes through PyAV
(FFmpeg's libraries, bundled in its wheels): it reads WAV, FLAC, OGG (Vorbis,
Opus), MP3, WebM and MP4 audio from bytes in memory, and its resampler turns any
rate into the 16 kHz float32 samples a speech model takes; channels are averaged
into one. Nothing shells out to an ``ffmpeg`` binary that may not be installed.

Encoding a response: WAV and raw PCM are written here (a 44-byte header and
16-bit samples), so they can be streamed block by block as they are produced;
FLAC, MP3 and Opus go through soundfile (libsndfile).

Every problem with the input raises ``AudioError`` (a ``ValueError``) with a
sentence that names it: empty, not audio, no audio stream, longer than allowed.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16_000  # what Whisper-family feature extractors expect
# The formats ``encode`` writes: OpenAI's speech ``response_format`` values.
OUTPUT_FORMATS = ("wav", "flac", "mp3", "opus", "pcm")
MEDIA_TYPES = {
    "wav": "audio/wav",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "pcm": "audio/pcm",
}
# Samples per block when streaming WAV/PCM/Opus (0.5 s at 24 kHz).
STREAM_BLOCK = 12_000
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
_MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


class AudioError(ValueError):
    """The uploaded bytes cannot be used as audio; the message says why."""


@dataclass(frozen=True, slots=True)
class DecodedAudio:
    samples: np.ndarray  # (n,) float32 in [-1, 1], mono, at ``SAMPLE_RATE``
    source_format: str  # the container PyAV recognised, e.g. "wav", "ogg", "mp3"

    @property
    def seconds(self) -> float:
        return float(self.samples.shape[0]) / SAMPLE_RATE


def decode(data: bytes, *, max_seconds: float) -> DecodedAudio:
    """Encoded audio bytes -> 16 kHz mono float32, refusing more than ``max_seconds``."""
    if not data:
        raise AudioError("the audio file is empty")
    ready = _mono_16k_wav_or_flac(data, max_seconds)
    if ready is not None:
        return ready
    import av  # heavy (FFmpeg's libraries): only when audio is decoded

    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise AudioError(f"the file is not audio that can be decoded ({exc})") from exc
    with container:
        if not container.streams.audio:
            raise AudioError("the file holds no audio stream")
        stream = container.streams.audio[0]
        # Planar float at 16 kHz, channels kept: they are averaged below. (FFmpeg's own
        # downmix weights each of two channels by 0.707, so a stereo file of one voice
        # would come out 3 dB louder than the same voice in mono.)
        resampler = av.AudioResampler(format="fltp", rate=SAMPLE_RATE)
        limit = int(max_seconds * SAMPLE_RATE)
        blocks: list[np.ndarray] = []
        total = 0
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    block = _mono(out.to_ndarray())  # (samples,)
                    blocks.append(block)
                    total += block.shape[0]
                if total > limit:
                    raise AudioError(
                        f"the audio is longer than {max_seconds:g} s (MAAS_MAX_AUDIO_SECONDS)"
                    )
            for out in resampler.resample(None):  # flush what the resampler holds
                blocks.append(_mono(out.to_ndarray()))
        except av.FFmpegError as exc:
            raise AudioError(f"the audio could not be decoded ({exc})") from exc
        source = container.format.name.split(",")[0]
    samples = np.concatenate(blocks).astype(np.float32) if blocks else np.zeros(0, np.float32)
    if samples.shape[0] == 0:
        raise AudioError("the audio holds no samples")
    if samples.shape[0] > limit:
        raise AudioError(f"the audio is longer than {max_seconds:g} s (MAAS_MAX_AUDIO_SECONDS)")
    if not np.isfinite(samples).all():
        raise AudioError("the audio holds samples that are not finite numbers")
    return DecodedAudio(samples, source)


def _mono(planes: np.ndarray) -> np.ndarray:
    """(channels, samples) planar float -> (samples,): the channels' mean."""
    mixed: np.ndarray = planes[0] if planes.shape[0] == 1 else planes.mean(axis=0, dtype=np.float32)
    return mixed


def _mono_16k_wav_or_flac(data: bytes, max_seconds: float) -> DecodedAudio | None:
    """A mono 16 kHz WAV or FLAC file read by libsndfile, or None for anything else.

    What a speech client most often sends needs neither resampling nor mixing, and
    libsndfile reads it in about 0.1 ms where opening a PyAV container costs 5 ms
    (a 3 s WAV, measured here): a tenth of a tiny model's whole transcription. The
    samples are the same (16-bit PCM / 32768 either way).
    """
    if not (data[:4] == b"RIFF" and data[8:12] == b"WAVE") and data[:4] != b"fLaC":
        return None
    import soundfile

    try:
        with soundfile.SoundFile(io.BytesIO(data)) as sound:
            if sound.samplerate != SAMPLE_RATE or sound.channels != 1:
                return None
            if sound.frames > int(max_seconds * SAMPLE_RATE):
                raise AudioError(
                    f"the audio is longer than {max_seconds:g} s (MAAS_MAX_AUDIO_SECONDS)"
                )
            samples = sound.read(dtype="float32")  # (frames,)
            source = sound.format.lower()
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        return None  # let PyAV try, and word the error if it fails too
    if samples.shape[0] == 0:
        raise AudioError("the audio holds no samples")
    if not np.isfinite(samples).all():  # a float WAV may hold NaN or infinity
        raise AudioError("the audio holds samples that are not finite numbers")
    return DecodedAudio(np.ascontiguousarray(samples), source)


def _int16(samples: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1] -> little-endian int16 (clipped)."""
    scaled: np.ndarray = np.clip(samples, -1.0, 1.0) * 32767.0
    return scaled.astype("<i2")


def wav_header(frames: int, sample_rate: int) -> bytes:
    """The 44-byte header of a 16-bit mono PCM WAV file holding ``frames`` samples."""
    data_bytes = frames * 2
    return b"".join(
        [
            b"RIFF",
            struct.pack("<I", 36 + data_bytes),
            b"WAVEfmt ",
            struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16),
            b"data",
            struct.pack("<I", data_bytes),
        ]
    )


def resample(samples: np.ndarray, rate: int, to: int) -> np.ndarray:
    """Mono float32 samples at ``rate`` -> at ``to`` (FFmpeg's resampler, through PyAV)."""
    if rate == to:
        return samples
    import av

    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(samples, dtype=np.float32).reshape(1, -1), format="flt", layout="mono"
    )
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=to)
    blocks = [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
    blocks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    joined: np.ndarray = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    return joined


def encode_blocks(samples: np.ndarray, sample_rate: int, fmt: str) -> Iterator[bytes]:
    """A waveform (``(n,)`` float32) as the bytes of ``fmt``, in blocks as they are encoded.

    WAV, PCM and Opus come out block by block as they are encoded (an Ogg stream
    only ever appends); FLAC and MP3 are encoded by libsndfile in one call, since it
    rewrites their first bytes (FLAC's STREAMINFO, MP3's Xing frame) when it closes
    them, and then sent in blocks. Opus carries 8, 12, 16, 24 or 48 kHz, MP3 the
    MPEG rates from 8 to 48 kHz: other rates are resampled to 48 kHz.
    """
    if fmt not in OUTPUT_FORMATS:
        raise AudioError(f"response_format must be one of {', '.join(OUTPUT_FORMATS)}")
    if fmt in ("wav", "pcm"):
        if fmt == "wav":
            yield wav_header(samples.shape[0], sample_rate)
        for start in range(0, samples.shape[0], STREAM_BLOCK):
            yield _int16(samples[start : start + STREAM_BLOCK]).tobytes()
        return
    import soundfile

    buffer = io.BytesIO()
    if fmt == "opus":
        rate = sample_rate if sample_rate in _OPUS_RATES else 48_000
        samples = resample(samples, sample_rate, rate)
        sent = 0
        with soundfile.SoundFile(
            buffer, mode="w", samplerate=rate, channels=1, format="OGG", subtype="OPUS"
        ) as sound:
            for start in range(0, samples.shape[0], STREAM_BLOCK):
                sound.write(samples[start : start + STREAM_BLOCK])
                with buffer.getbuffer() as view:  # released at once: the buffer must grow
                    written = view.nbytes
                if written > sent:
                    yield buffer.getvalue()[sent:written]
                    sent = written
        yield buffer.getvalue()[sent:]
        return
    container, subtype = {"flac": ("FLAC", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III")}[fmt]
    rate = sample_rate
    if fmt == "mp3" and rate not in _MP3_RATES:
        rate = 48_000
        samples = resample(samples, sample_rate, rate)
    soundfile.write(buffer, samples, rate, format=container, subtype=subtype)
    encoded = buffer.getvalue()
    for start in range(0, len(encoded), 64 * 1024):
        yield encoded[start : start + 64 * 1024]
