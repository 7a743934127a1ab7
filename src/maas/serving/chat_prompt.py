"""A request's conversation as the model's chat template reads it, tools included.

Two ways, picked per model:

* the template reads a ``tools`` variable (the Hugging Face convention, as in
  Qwen, Llama 3.1, Hermes templates): it gets the offered functions there and
  the conversation in transformers' shape, assistant ``tool_calls`` (arguments
  as objects) and ``tool`` messages with their ``tool_call_id``; the template
  words them the way the model was trained on. Only GGUF models render this
  way: ``hf`` models are refused tools before they get here;
* any other template: the plain ``role``/``content`` turns every template
  reads, with the functions described in the system prompt, earlier calls
  written into the assistant turns and results sent back as user turns, in the
  format of ``tool_calls``.

A conversation without functions or tool turns takes neither way: it is the
runtime's own ``encode_chat`` of its turns, unchanged.
"""

from __future__ import annotations

import json
from typing import Any

from maas.errors import InvalidRequestError
from maas.runtimes.chat_template import render_chat, template_variables
from maas.runtimes.llama_cpp import LlamaCppTextGenerationRuntime
from maas.runtimes.text_generation import TextGenerationRuntime
from maas.serving.generation_types import GenerationRequest, Message
from maas.serving.tool_calls import (
    call_text,
    response_text,
    tool_definitions,
    tools_instructions,
)


def encode_conversation(runtime: TextGenerationRuntime, request: GenerationRequest) -> list[int]:
    """The prompt token ids of ``request.messages`` (and its tools) under the model's template."""
    uses_tools = request.calls_tools or any(
        m.role == "tool" or m.tool_calls for m in request.messages
    )
    if uses_tools and isinstance(runtime, LlamaCppTextGenerationRuntime):
        template = runtime.chat_template
        if template and "tools" in template_variables(template):
            return _encode_with_template_tools(runtime, template, request)
    return runtime.encode_chat(plain_turns(request))


def plain_turns(request: GenerationRequest) -> list[dict[str, str]]:
    """``role``/``content`` turns, with tools and tool turns written in the text format."""
    turns: list[dict[str, str]] = []
    previous: Message | None = None
    for message in request.messages:
        if message.role == "tool":
            result = response_text(message.content)
            if previous is not None and previous.role == "tool":
                turns[-1]["content"] += "\n" + result  # one turn for a round's results
            else:
                turns.append({"role": "user", "content": result})
        elif message.tool_calls:
            calls = "\n".join(call_text(name, args) for _, name, args in message.tool_calls)
            content = f"{message.content}\n{calls}" if message.content else calls
            turns.append({"role": message.role, "content": content})
        else:
            turns.append({"role": message.role, "content": message.content})
        previous = message
    if request.calls_tools:
        section = tools_instructions(request.tools, request.tool_choice, request.tool_name)
        if turns and turns[0]["role"] in ("system", "developer"):
            turns[0] = {**turns[0], "content": f"{turns[0]['content']}\n\n{section}"}
        else:
            turns.insert(0, {"role": "system", "content": section})
    return turns


def _encode_with_template_tools(
    runtime: LlamaCppTextGenerationRuntime, template: str, request: GenerationRequest
) -> list[int]:
    rendered = render_chat(
        template,
        template_messages(request),
        bos_token=runtime.bos_text,
        eos_token=runtime.eos_text,
        tools=tool_definitions(request.tools) if request.calls_tools else None,
    )
    # As the runtime's encode_chat: the template wrote the special tokens it wants.
    ids: list[int] = runtime.tokenizer.encode(rendered, add_special=False, parse_special=True)
    if not ids:
        raise InvalidRequestError("the rendered conversation is empty", param="messages")
    return ids


def template_messages(request: GenerationRequest) -> list[dict[str, Any]]:
    """The conversation in transformers' shape for templates that read tool calls."""
    names: dict[str, str] = {}  # call id -> function name, for the tool turns' "name"
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        turn: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.tool_calls:
            calls = []
            for call_id, name, arguments in message.tool_calls:
                names[call_id] = name
                try:
                    parsed: Any = json.loads(arguments)
                except ValueError:
                    parsed = arguments
                function = {"name": name, "arguments": parsed}
                calls.append({"id": call_id, "type": "function", "function": function})
            turn["tool_calls"] = calls
        if message.role == "tool":
            turn["tool_call_id"] = message.tool_call_id
            if message.tool_call_id in names:
                turn["name"] = names[message.tool_call_id]
        messages.append(turn)
    return messages
