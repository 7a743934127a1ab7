"""The tool-call text format: how a model is told about functions and how its calls are read.

maas uses one format, the one Hermes and Qwen models are trained on and that
llama.cpp's server, vLLM and Ollama all read: each call is a JSON object with
the function's ``name`` and its ``arguments``, alone between ``<tool_call>``
and ``</tool_call>`` tags; results go back to the model between
``<tool_response>`` tags. A model whose chat template takes a ``tools``
variable is given the functions through it (``chat_prompt``); for any other
template, ``tools_instructions`` writes them into the system prompt in this
format, and earlier calls and results are written into the conversation the
same way (``call_text``, ``response_text``), so the model sees its own past
calls in the form it is asked to produce.

Reading the output: ``split_tool_calls`` for a whole text, ``ToolCallStream``
for text arriving in pieces (it holds back whatever could still become a
call). A block that is not a valid call of an offered function stays text:
nothing the model wrote is dropped. When ``tool_choice`` demands a call the
output is grammar-constrained to this format (``structured``), so it parses.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from maas.serving.generation_types import Tool

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call the model made: OpenAI's ``tool_calls[i]`` (``arguments`` is JSON text)."""

    id: str
    name: str
    arguments: str


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


def tool_definitions(tools: Sequence[Tool]) -> list[dict[str, object]]:
    """``tools`` as OpenAI sends them (and chat templates read them)."""
    definitions: list[dict[str, object]] = []
    for tool in tools:
        function: dict[str, object] = {"name": tool.name}
        if tool.description:
            function["description"] = tool.description
        function["parameters"] = json.loads(tool.parameters)
        definitions.append({"type": "function", "function": function})
    return definitions


def tools_instructions(tools: Sequence[Tool], choice: str, name: str | None) -> str:
    """The system-prompt section that offers ``tools`` to a model whose template cannot."""
    listing = "\n".join(json.dumps(d, ensure_ascii=False) for d in tool_definitions(tools))
    if name is not None:
        rule = f"You must call the function {name}."
    elif choice == "required":
        rule = "You must call at least one function."
    else:
        rule = "Call a function only when it helps; otherwise answer directly."
    return (
        "# Tools\n\n"
        "You can call functions. Each one is described by a JSON Schema of its arguments, "
        f"within <tools></tools>:\n<tools>\n{listing}\n</tools>\n\n"
        "To call one, write a JSON object with its name and its arguments between "
        f"{CALL_OPEN}{CALL_CLOSE} tags, one call per line:\n"
        f'{CALL_OPEN}{{"name": "<function name>", "arguments": {{...}}}}{CALL_CLOSE}\n'
        f"The results come back between {RESPONSE_OPEN}{RESPONSE_CLOSE} tags. {rule}"
    )


def call_text(name: str, arguments: str) -> str:
    """One earlier call, written as the model is asked to write calls."""
    try:
        parsed: object = json.loads(arguments)
    except ValueError:
        parsed = arguments  # the client sent arguments that are not JSON; show them as given
    body = json.dumps({"name": name, "arguments": parsed}, ensure_ascii=False)
    return f"{CALL_OPEN}{body}{CALL_CLOSE}"


def response_text(content: str) -> str:
    """One tool result, as the model is told results come back."""
    return f"{RESPONSE_OPEN}\n{content}\n{RESPONSE_CLOSE}"


def parse_call(body: str, names: Collection[str]) -> ToolCall | None:
    """The call in one block's text, or None if it is not a call of one of ``names``."""
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    name = value.get("name")
    # "parameters" is what some models (Llama 3.x) write for the arguments.
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(name, str) or name not in names or not isinstance(arguments, dict):
        return None
    return ToolCall(new_call_id(), name, json.dumps(arguments, ensure_ascii=False))


def split_tool_calls(text: str, names: Collection[str]) -> tuple[str, list[ToolCall]]:
    """A whole completion's text outside the calls, and the calls in it, in order."""
    stream = ToolCallStream(names)
    pieces = [*stream.feed(text), *stream.finish()]
    calls = [p for p in pieces if isinstance(p, ToolCall)]
    content = "".join(p for p in pieces if isinstance(p, str))
    return content, calls


@dataclass
class ToolCallStream:
    """Splits text arriving in pieces into content text and ``ToolCall``s.

    ``feed`` returns what can be released: text that cannot be part of a call
    any more, and each call once its closing tag has arrived. Trailing
    whitespace is held until text follows it, so the blank lines around calls
    never go out as content of an answer that is only calls.
    """

    names: Collection[str]
    calls: int = field(default=0, init=False)  # calls released so far
    _buffer: str = field(default="", init=False)  # text not released yet
    _in_call: bool = field(default=False, init=False)  # the buffer is inside <tool_call>
    _space: str = field(default="", init=False)  # whitespace waiting for what follows

    def feed(self, text: str) -> list[str | ToolCall]:
        self._buffer += text
        out: list[str | ToolCall] = []
        while True:
            if self._in_call:
                end = self._buffer.find(CALL_CLOSE)
                if end < 0:
                    return out
                self._close(self._buffer[:end], out, closed=True)
                self._buffer = self._buffer[end + len(CALL_CLOSE) :]
                continue
            start = self._buffer.find(CALL_OPEN)
            if start >= 0:
                self._text(self._buffer[:start], out)
                self._buffer = self._buffer[start + len(CALL_OPEN) :]
                self._in_call = True
                continue
            keep = _partial_suffix(self._buffer, CALL_OPEN)
            self._text(self._buffer[: len(self._buffer) - keep], out)
            self._buffer = self._buffer[len(self._buffer) - keep :]
            return out

    def finish(self) -> list[str | ToolCall]:
        """The rest, at the end of the completion: an unclosed call counts if it parses."""
        out: list[str | ToolCall] = []
        if self._in_call:
            self._close(self._buffer, out, closed=False)
        else:
            self._text(self._buffer, out)
        self._buffer = ""
        if self._space and not self.calls:
            out.append(self._space)
        self._space = ""
        return out

    def _close(self, body: str, out: list[str | ToolCall], *, closed: bool) -> None:
        self._in_call = False
        call = parse_call(body, self.names)
        if call is None:  # not a call after all: what the model wrote is content
            self._text(CALL_OPEN + body + (CALL_CLOSE if closed else ""), out)
            return
        self.calls += 1
        out.append(call)

    def _text(self, text: str, out: list[str | ToolCall]) -> None:
        # Trailing whitespace waits for what follows: dropped before calls at the end.
        body = text.rstrip()
        if body:
            out.append(self._space + body)
            self._space = text[len(body) :]
        else:
            self._space += text


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that is a proper start of ``tag``."""
    for size in range(min(len(text), len(tag) - 1), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0
