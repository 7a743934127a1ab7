"""The generation interface of ``ModelHost``: plain data on both sides.

A generation is asked for in plain data (``GenerationRequest``) and answered
as a stream of plain data (``Prepared``, then ``Chunk``s), so that the same
calls work in this process (``LocalHost``) and across a process boundary
(the engine process's ``RemoteHost``): no callbacks, runtimes or futures
cross it. Every engine (``serving.generation``) speaks these types.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# The dataclasses below are the generation interface of ``ModelHost``: plain values
# only. msgpack brings tuples back as lists, so the tuple fields are made tuples again.


@dataclass(frozen=True, slots=True)
class SamplingParams:
    # None: what the context leaves after the prompt, at most DEFAULT_MAX_TOKENS.
    max_tokens: int | None = None
    temperature: float = 1.0  # 0 = greedy (deterministic)
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = None  # None = no alternatives; needs the exact path
    # The rest only the llama.cpp engine honours (the transformers one refuses them):
    min_p: float = 0.0  # 0 = off
    presence_penalty: float = 0.0  # OpenAI's, over the tokens generated so far
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # transformers' (CTRL) penalty; 1 = off
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    grammar: str | None = None  # GBNF, root rule "root": what the output must match
    grammar_trigger: str | None = None  # the grammar applies from this text on (None: all)

    def __post_init__(self) -> None:
        if not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop))
        if not isinstance(self.logit_bias, tuple) or any(
            not isinstance(pair, tuple) for pair in self.logit_bias
        ):
            pairs = tuple((int(t), float(b)) for t, b in self.logit_bias)
            object.__setattr__(self, "logit_bias", pairs)

    @property
    def penalized(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty) or (
            self.repetition_penalty != 1.0
        )

    @property
    def exact_path(self) -> bool:
        return self.top_logprobs is not None or (self.seed is not None and self.temperature > 0)


@dataclass(frozen=True, slots=True)
class Message:
    """One turn of a conversation, as the chat template reads it."""

    role: str  # system | developer | user | assistant | tool
    content: str
    # An assistant turn's calls: (id, function name, arguments as JSON text) each.
    tool_calls: tuple[tuple[str, str, str], ...] = ()
    tool_call_id: str | None = None  # a tool turn: the call it answers

    def __post_init__(self) -> None:
        if not isinstance(self.tool_calls, tuple) or any(
            not isinstance(call, tuple) for call in self.tool_calls
        ):
            calls = tuple((str(i), str(n), str(a)) for i, n, a in self.tool_calls)
            object.__setattr__(self, "tool_calls", calls)


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call (OpenAI's ``tools[].function``)."""

    name: str
    description: str = ""
    parameters: str = "{}"  # its arguments' JSON Schema, as JSON text


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What to generate from: a conversation (chat template) or a plain prompt, ``n`` times."""

    messages: tuple[Message, ...] = ()
    prompt: str | None = None
    params: SamplingParams = SamplingParams()
    n: int = 1  # completions of the same prompt, generated side by side in the running batch
    # Structured output: "text" (free), "json_object" (any JSON object) or "json_schema".
    response_format: str = "text"
    json_schema: str | None = None  # JSON text of the schema, for "json_schema"
    strict: bool = False  # refuse schema keywords the grammar cannot enforce
    tools: tuple[Tool, ...] = ()
    # "none" | "auto" | "required"; a named function is "required" with tool_name set.
    tool_choice: str = "auto"
    tool_name: str | None = None
    parallel_tool_calls: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.messages, tuple):
            object.__setattr__(self, "messages", tuple(self.messages))
        if not isinstance(self.tools, tuple):
            object.__setattr__(self, "tools", tuple(self.tools))
        if bool(self.messages) == (self.prompt is not None):
            raise ValueError("a generation request has either messages or a prompt")
        if self.n < 1:
            raise ValueError("n must be at least 1")

    @property
    def calls_tools(self) -> bool:
        """Whether the model is offered functions to call (and its output parsed for calls)."""
        return bool(self.tools) and self.tool_choice != "none"

    def texts(self) -> list[str]:
        """The caller's texts, in order (what PII screening reads and rewrites)."""
        return [m.content for m in self.messages] if self.messages else [self.prompt or ""]

    def with_texts(self, texts: list[str]) -> GenerationRequest:
        """The same request over rewritten texts (``texts()`` order)."""
        if self.messages:
            messages = tuple(
                replace(m, content=t) for m, t in zip(self.messages, texts, strict=True)
            )
            return replace(self, messages=messages)
        (prompt,) = texts
        return replace(self, prompt=prompt)


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()  # the most likely tokens at this step, best first

    def __post_init__(self) -> None:
        if not isinstance(self.top, tuple):
            object.__setattr__(self, "top", tuple((t, lp) for t, lp in self.top))


@dataclass(frozen=True, slots=True)
class Prepared:
    """The first event of every generation: the prompt is encoded and fits.

    Nothing is generating yet when it arrives; a consumer that closes the stream
    here (a refused token budget) leaves nothing running.
    """

    prompt_tokens: int
    max_tokens: int  # per sequence, resolved for this prompt


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of one completion: new text, and at the end why it stopped."""

    text: str
    finish_reason: str | None = None  # "stop" | "length" on the last chunk
    completion_tokens: int = 0  # of this sequence, so far
    logprobs: tuple[TokenLogprob, ...] = ()
    index: int = 0  # which of the request's n sequences
    cached_tokens: int = 0  # prompt tokens it reused from the prefix cache (on its last chunk)

    def __post_init__(self) -> None:
        if not isinstance(self.logprobs, tuple):
            object.__setattr__(self, "logprobs", tuple(self.logprobs))


GenerationEvent = Prepared | Chunk
