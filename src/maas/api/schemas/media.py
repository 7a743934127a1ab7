"""OpenAI-compatible request bodies of the speech and image routes.

Unknown fields are ignored, as OpenAI's API does. Transcriptions arrive as
multipart forms (``api/audio.py`` reads them); these are the JSON bodies.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from maas.runtimes.text_to_image import DEFAULT_GUIDANCE, DEFAULT_STEPS, MAX_STEPS
from maas.runtimes.text_to_speech import MAX_SPEED, MIN_SPEED

TRANSCRIPT_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
MAX_IMAGES = 10  # OpenAI's own limit of n

SpeechFormat = Literal["wav", "flac", "mp3", "opus", "pcm"]


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    input: str = Field(description="The text to speak.")
    voice: str = Field(default="alloy", min_length=1, max_length=64)
    response_format: SpeechFormat = "mp3"
    speed: float = Field(default=1.0, ge=MIN_SPEED, le=MAX_SPEED)
    stream_format: Literal["audio"] = Field(
        default="audio", description="Only raw audio bytes ('sse' is not served)."
    )


class ImagesRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    prompt: str
    n: int = Field(default=1, ge=1, le=MAX_IMAGES)
    size: str = Field(default="auto", description="WIDTHxHEIGHT, or auto (the model's own).")
    response_format: Literal["b64_json"] = Field(
        default="b64_json", description="Images come back inline; 'url' is not served."
    )
    # maas extensions (the openai client sends them with extra_body)
    seed: int | None = Field(default=None, ge=0, description="Same seed, same image.")
    steps: int = Field(default=DEFAULT_STEPS, ge=1, le=MAX_STEPS)
    guidance_scale: float = Field(default=DEFAULT_GUIDANCE, ge=0.0, le=50.0)
    negative_prompt: str | None = None
    user: str | None = None
