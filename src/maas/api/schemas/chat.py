"""OpenAI chat and text completion request bodies.

Unknown fields are ignored, as OpenAI's API does. Fields maas recognises but
cannot honour (``echo``, ``suffix``, tools on ``/v1/completions``…) are
refused with a 400 naming them rather than silently ignored: a client relying
on them would otherwise get answers that look right and are not. What only
GGUF versions honour (penalties, ``logit_bias``, ``min_p``, structured output,
tools) is refused by the serving side for other formats, since only it knows
the model's format.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_STOP = 4
MAX_N = 8
MAX_LOGIT_BIAS = 1024  # entries
MAX_TOOLS = 128
FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function and schema names


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    arguments: str  # JSON text, as the model wrote it


class MessageToolCall(BaseModel):
    """A call an earlier assistant turn made (sent back so the model sees it)."""

    model_config = ConfigDict(extra="ignore")

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None  # assistant turns
    tool_call_id: str | None = None  # tool turns: the call answered

    @model_validator(mode="after")
    def _tool_fields(self) -> ChatMessage:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    # "schema" would shadow a BaseModel attribute; the wire name stays "schema".
    json_schema: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a json_schema object")
        return self


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # JSON Schema; left out: no arguments
    strict: bool | None = None


class ToolDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"]
    function: FunctionName


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
    min_p: float = Field(default=0, ge=0, le=1, description="maas extension: 0 = off")
    repetition_penalty: float = Field(
        default=1.0, gt=0, le=10, description="maas extension (transformers' penalty): 1 = off"
    )
    user: str | None = None

    @field_validator("logit_bias")
    @classmethod
    def _biases(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if not value:
            return value
        if len(value) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} entries")
        for token, bias in value.items():
            if not token.isdigit():
                raise ValueError(f"keys are token ids (non-negative integers); got {token!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"biases are from -100 to 100; token {token} has {bias}")
        return value

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

    def bias_pairs(self) -> tuple[tuple[int, float], ...]:
        return tuple((int(token), bias) for token, bias in (self.logit_bias or {}).items())

    def unsupported(self) -> dict[str, Any]:
        """Fields given with a value maas cannot honour -> why."""
        found: dict[str, Any] = {}
        if self.stream_options is not None and not self.stream:
            found["stream_options"] = "is only allowed when stream is true"
        return found


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[ToolDefinition] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True

    def tool_mode(self) -> tuple[str, str | None]:
        """(``none`` | ``auto`` | ``required``, the one function named or None)."""
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice):
            return "required", choice.function.name
        if choice is None:
            return ("auto" if self.tools else "none"), None
        return choice, None

    def unsupported(self) -> dict[str, Any]:
        found = super().unsupported()
        names = [t.function.name for t in self.tools or ()]
        mode, named = self.tool_mode()
        if self.tool_choice is not None and not self.tools:
            found["tool_choice"] = "is only allowed when tools are given"
        elif named is not None and named not in names:
            found["tool_choice"] = f"names function {named!r}, which is not in tools"
        if len(set(names)) != len(names):
            found["tools"] = "must not define two functions of the same name"
        formatted = self.response_format is not None and self.response_format.type != "text"
        if formatted and self.tools and mode != "none":
            found["response_format"] = (
                "cannot be combined with tools (unless tool_choice is 'none'): the answer is "
                "either a tool call or the formatted output"
            )
        if self.top_logprobs is not None and not self.logprobs:
            found["top_logprobs"] = "requires logprobs: true"
        return found


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    # Chat-only fields, refused here rather than ignored.
    tools: Any = None
    response_format: Any = None

    def unsupported(self) -> dict[str, Any]:
        found = super().unsupported()
        if self.tools:
            found["tools"] = "are only supported on /v1/chat/completions"
        plain = (
            isinstance(self.response_format, dict) and self.response_format.get("type") == "text"
        )
        if self.response_format and not plain:
            found["response_format"] = "is only supported on /v1/chat/completions"
        if self.echo:
            found["echo"] = "is not supported"
        if self.suffix:
            found["suffix"] = "is not supported"
        if self.best_of not in (None, 1):
            found["best_of"] = "is not supported"
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            found["prompt"] = "must be one string (or a list of exactly one)"
        return found
