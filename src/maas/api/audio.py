"""``/v1/audio``: OpenAI's transcriptions, translations and speech, on maas models.

Transcriptions and translations take a multipart form exactly as OpenAI's:
``file``, ``model``, ``language``, ``prompt``, ``response_format`` (json, text,
srt, vtt, verbose_json), ``temperature``, ``timestamp_granularities[]``. Speech
takes a JSON body and streams the encoded audio back as it is written.

The routes parse and check; the data plane (``serving/speech.py``) resolves
the model, decodes, batches and meters.
"""

from __future__ import annotations

import math
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.datastructures import FormData, UploadFile

from maas.api.bodies import JsonBodyRoute
from maas.api.deps import CtxDep, DataPlaneDep, SettingsDep, require_key
from maas.api.feedback import answer_headers
from maas.api.schemas.media import TRANSCRIPT_FORMATS, SpeechRequest
from maas.config import Settings
from maas.errors import InvalidRequestError, PayloadTooLargeError
from maas.registry.refs import model_name
from maas.runtimes.audio import MEDIA_TYPES, encode_blocks
from maas.serving.context import RequestContext
from maas.serving.dataplane import DataPlane
from maas.serving.speech import Transcript, TranscriptionRequest, speak, transcribe

router = APIRouter(
    prefix="/v1/audio",
    tags=["openai"],
    dependencies=[Depends(require_key)],
    route_class=JsonBodyRoute,
)

# Multipart: a form has a handful of small fields and one file.
_MAX_FIELDS = 32
_MAX_FIELD_BYTES = 64 * 1024
_FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the small fields around the file
_GRANULARITIES = ("segment", "word")
# The form, as OpenAI documents it, for the OpenAPI document (the route parses it itself).
_FORM_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "model"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "model": {"type": "string"},
                        "language": {"type": "string", "description": "ISO 639-1, e.g. en"},
                        "prompt": {"type": "string"},
                        "response_format": {"type": "string", "enum": list(TRANSCRIPT_FORMATS)},
                        "temperature": {"type": "number", "minimum": 0, "maximum": 1},
                        "timestamp_granularities[]": {
                            "type": "array",
                            "items": {"type": "string", "enum": ["segment"]},
                        },
                    },
                }
            }
        },
    }
}


def _field(form: Any, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequestError(f"{name} must be a form field, not a file", param=name)
    return value


def _temperature(raw: str | None) -> float:
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError as exc:
        raise InvalidRequestError(f"temperature must be a number, not {raw[:20]!r}") from exc
    if not 0.0 <= value <= 1.0:
        raise InvalidRequestError("temperature must be between 0 and 1", param="temperature")
    return value


async def _read_form(
    request: Request, *, max_bytes: int, translate: bool
) -> tuple[str, str, TranscriptionRequest]:
    """(model, response_format, the request) from the multipart form, or a 400/413."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + _FORM_OVERHEAD:
        raise PayloadTooLargeError(
            f"the upload is {int(declared)} bytes; audio files may have at most {max_bytes} "
            "bytes (MAAS_MAX_AUDIO_BYTES)"
        )
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequestError(
            "send the audio as a multipart/form-data upload with fields file and model"
        )
    form = await request.form(max_files=1, max_fields=_MAX_FIELDS, max_part_size=_MAX_FIELD_BYTES)
    try:
        return await _parse_form(form, max_bytes=max_bytes, translate=translate)
    finally:
        await form.close()  # the spooled temporary file of the upload


async def _parse_form(
    form: FormData, *, max_bytes: int, translate: bool
) -> tuple[str, str, TranscriptionRequest]:
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise InvalidRequestError("the form has no file field holding the audio", param="file")
    model = _field(form, "model")
    if not model:
        raise InvalidRequestError("the form has no model field", param="model")
    if upload.size is not None and upload.size > max_bytes:
        raise PayloadTooLargeError(
            f"the audio file is {upload.size} bytes; at most {max_bytes} bytes "
            "(MAAS_MAX_AUDIO_BYTES)"
        )
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLargeError(
            f"the audio file is larger than {max_bytes} bytes (MAAS_MAX_AUDIO_BYTES)"
        )
    if not data:
        raise InvalidRequestError("the audio file is empty", param="file")
    response_format = _field(form, "response_format") or "json"
    if response_format not in TRANSCRIPT_FORMATS:
        raise InvalidRequestError(
            f"response_format must be one of {', '.join(TRANSCRIPT_FORMATS)}",
            param="response_format",
        )
    granularities = [g for g in form.getlist("timestamp_granularities[]") if isinstance(g, str)]
    for g in granularities:
        if g not in _GRANULARITIES:
            raise InvalidRequestError(
                f"timestamp_granularities[] takes segment or word, not {g[:20]!r}",
                param="timestamp_granularities",
            )
    if "word" in granularities:
        raise InvalidRequestError(
            "word timestamps are not served; ask for segment timestamps",
            param="timestamp_granularities",
        )
    if granularities and response_format != "verbose_json":
        raise InvalidRequestError(
            "timestamp_granularities[] needs response_format verbose_json",
            param="timestamp_granularities",
        )
    if (_field(form, "stream") or "false").lower() == "true":
        raise InvalidRequestError("streamed transcriptions are not served", param="stream")
    language = _field(form, "language") or None
    if translate and language is not None:
        raise InvalidRequestError("translations take no language: they are to English")
    return (
        model,
        response_format,
        TranscriptionRequest(
            data,
            translate=translate,
            language=language.strip().lower() if language else None,
            prompt=_field(form, "prompt") or None,
            temperature=_temperature(_field(form, "temperature")),
            timestamps=response_format in ("srt", "vtt", "verbose_json"),
        ),
    )


def _clock(seconds: float, separator: str) -> str:
    """Seconds as HH:MM:SS,mmm (SRT) or HH:MM:SS.mmm (WebVTT)."""
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def subtitles(transcript: Transcript, fmt: str) -> str:
    """The transcript's segments as SRT or WebVTT cues (segments without text are left out)."""
    separator = "," if fmt == "srt" else "."
    cues = [s for s in transcript.segments if s.text]
    lines = [] if fmt == "srt" else ["WEBVTT", ""]
    for number, seg in enumerate(cues, 1):
        if fmt == "srt":
            lines.append(str(number))
        lines.append(f"{_clock(seg.start, separator)} --> {_clock(seg.end, separator)}")
        lines.extend([seg.text, ""])
    return "\n".join(lines) + "\n"


def _answer(transcript: Transcript, fmt: str, translate: bool, ctx: RequestContext) -> Response:
    headers = answer_headers(ctx)
    usage = {"type": "duration", "seconds": math.ceil(transcript.duration)}
    if fmt == "text":
        return PlainTextResponse(transcript.text + "\n", headers=headers)
    if fmt in ("srt", "vtt"):
        media = "application/x-subrip" if fmt == "srt" else "text/vtt"
        return PlainTextResponse(subtitles(transcript, fmt), media_type=media, headers=headers)
    body: dict[str, Any] = {"text": transcript.text, "usage": usage}
    if fmt == "verbose_json":
        body = {
            "task": "translate" if translate else "transcribe",
            "language": transcript.language,
            "duration": round(transcript.duration, 3),
            "text": transcript.text,
            "segments": [
                {
                    "id": i,
                    "seek": 0,
                    "start": seg.start,
                    "end": seg.end,
                    "text": seg.text,
                    "tokens": seg.tokens,
                    # Not computed by maas: null rather than a made-up number.
                    "temperature": None,
                    "avg_logprob": None,
                    "compression_ratio": None,
                    "no_speech_prob": None,
                }
                for i, seg in enumerate(transcript.segments)
            ],
            "usage": usage,
        }
    return JSONResponse(body, headers=headers)


async def _speech_to_text(
    request: Request,
    ctx: RequestContext,
    dataplane: DataPlane,
    settings: Settings,
    *,
    translate: bool,
) -> Response:
    model, fmt, wanted = await _read_form(
        request, max_bytes=settings.max_audio_bytes, translate=translate
    )
    ctx.ensure_model(model_name(model))
    transcript = await transcribe(
        dataplane, ctx, model, wanted, max_seconds=settings.max_audio_seconds
    )
    return _answer(transcript, fmt, translate, ctx)


@router.post("/transcriptions", response_model=None, openapi_extra=_FORM_BODY)
async def create_transcription(
    request: Request, ctx: CtxDep, dataplane: DataPlaneDep, settings: SettingsDep
) -> Response:
    """Speech to text in the language spoken (multipart: file, model, ...)."""
    return await _speech_to_text(request, ctx, dataplane, settings, translate=False)


@router.post("/translations", response_model=None, openapi_extra=_FORM_BODY)
async def create_translation(
    request: Request, ctx: CtxDep, dataplane: DataPlaneDep, settings: SettingsDep
) -> Response:
    """Speech to English text (multipart: file, model, ...)."""
    return await _speech_to_text(request, ctx, dataplane, settings, translate=True)


@router.post("/speech", response_model=None)
async def create_speech(
    body: SpeechRequest, ctx: CtxDep, dataplane: DataPlaneDep, settings: SettingsDep
) -> Response:
    """Text to speech; the audio streams back as it is encoded."""
    if len(body.input) > settings.max_speech_input_chars:
        raise PayloadTooLargeError(
            f"input has {len(body.input)} characters; at most "
            f"{settings.max_speech_input_chars} (MAAS_MAX_SPEECH_INPUT_CHARS)"
        )
    if not body.input.strip():
        raise InvalidRequestError("input must not be empty", param="input")
    ctx.ensure_model(model_name(body.model))
    speech = await speak(dataplane, ctx, body.model, body.input, voice=body.voice, speed=body.speed)
    wave = speech.waveform
    fmt = body.response_format
    headers = {**answer_headers(ctx), "x-maas-sample-rate": str(wave.sample_rate)}
    blocks = encode_blocks(wave.samples, wave.sample_rate, fmt)
    if fmt in ("flac", "mp3"):
        # Encoded in one call anyway (runtimes/audio.py): before the status line, on a
        # worker thread, so that an encoder failure is an error answer, not a cut stream.
        encoded = await anyio.to_thread.run_sync(lambda: b"".join(blocks))
        return Response(encoded, media_type=MEDIA_TYPES[fmt], headers=headers)
    return StreamingResponse(blocks, media_type=MEDIA_TYPES[fmt], headers=headers)
