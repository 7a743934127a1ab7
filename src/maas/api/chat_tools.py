"""OpenAI's ``tool_calls`` in chat answers: read from the completions' text, whole or streamed.

The model writes calls in maas's tool-call text format
(``serving.tool_calls``); this turns them into what OpenAI sends: a message
with ``tool_calls`` (``content`` null when nothing else was said) and
``finish_reason: "tool_calls"``, or, streaming, ``delta.tool_calls`` entries
that each carry one whole call (index, id, type, name and all its arguments):
a call is released once its closing tag arrives, which clients that
concatenate argument fragments read the same as OpenAI's finer pieces.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from maas.serving.tool_calls import ToolCall, ToolCallStream, split_tool_calls


def _call_json(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def _finish(reason: str | None, calls: int) -> str | None:
    # A completion that ended on its own after calling is OpenAI's "tool_calls";
    # one cut by max_tokens stays "length" (its last call may be missing).
    return "tool_calls" if calls and reason == "stop" else reason


def tool_message(
    text: str, finish_reason: str, names: Collection[str]
) -> tuple[dict[str, Any], str]:
    """The assistant message of a whole completion, and its finish reason."""
    content, calls = split_tool_calls(text, names)
    if not calls:
        return {"role": "assistant", "content": text}, finish_reason
    message = {
        "role": "assistant",
        "content": content or None,
        "tool_calls": [_call_json(call) for call in calls],
    }
    return message, _finish(finish_reason, len(calls)) or finish_reason


class ToolDeltas:
    """Streamed chat deltas of ``n`` completions with their tool calls taken out."""

    def __init__(self, names: Collection[str]) -> None:
        self.names = names
        self._streams: dict[int, ToolCallStream] = {}

    def delta(
        self, index: int, text: str, finish_reason: str | None
    ) -> tuple[dict[str, Any], str | None]:
        """The delta of one chunk of choice ``index`` (maybe empty), and its finish reason."""
        stream = self._streams.setdefault(index, ToolCallStream(self.names))
        before = stream.calls
        pieces = stream.feed(text)
        if finish_reason is not None:
            pieces += stream.finish()
        delta: dict[str, Any] = {}
        content = "".join(p for p in pieces if isinstance(p, str))
        if content:
            delta["content"] = content
        calls = [p for p in pieces if isinstance(p, ToolCall)]
        if calls:
            delta["tool_calls"] = [
                {"index": before + i, **_call_json(call)} for i, call in enumerate(calls)
            ]
        return delta, _finish(finish_reason, stream.calls)
