"""OpenAI chat and text completion request bodies.

Unknown fields are ignored, as OpenAI's API does. Fields maas recognises but
cannot honour (tools, penalties, non-text response formats, ``echo``…) are
refused with a 400 naming them rather than silently ignored: a client relying
on them would otherwise get answers that look right and are not.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP = 4
MAX_N = 8


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0, description="maas extension: 0 = off")
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(default=0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return value

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def unsupported(self) -> dict[str, Any]:
        """Fields given with a value maas cannot honour -> why."""
        found: dict[str, Any] = {}
        if self.presence_penalty:
            found["presence_penalty"] = "is not supported; send 0 or leave it out"
        if self.frequency_penalty:
            found["frequency_penalty"] = "is not supported; send 0 or leave it out"
        if self.logit_bias:
            found["logit_bias"] = "is not supported"
        if self.stream_options is not None and not self.stream:
            found["stream_options"] = "is only allowed when stream is true"
        return found


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None

    def unsupported(self) -> dict[str, Any]:
        found = super().unsupported()
        if self.response_format is not None and self.response_format.type != "text":
            found["response_format"] = (
                f"type {self.response_format.type!r} is not supported; only 'text'"
            )
        if self.tools:
            found["tools"] = "tool calling is not supported"
        if self.top_logprobs is not None and not self.logprobs:
            found["top_logprobs"] = "requires logprobs: true"
        return found


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def unsupported(self) -> dict[str, Any]:
        found = super().unsupported()
        if self.echo:
            found["echo"] = "is not supported"
        if self.suffix:
            found["suffix"] = "is not supported"
        if self.best_of not in (None, 1):
            found["best_of"] = "is not supported"
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            found["prompt"] = "must be one string (or a list of exactly one)"
        return found
