"""The tool-call text format: how functions are offered in a prompt and how calls are read back.

Pure functions and a small state machine, tested without a model: the
grammar-constrained and model-driven paths are in tests/e2e/test_openai_tools.py.
"""

from __future__ import annotations

import json

import pytest

from maas.runtimes.chat_template import render_chat, template_variables
from maas.serving.chat_prompt import plain_turns, template_messages
from maas.serving.generation_types import GenerationRequest, Message, Tool
from maas.serving.tool_calls import (
    ToolCall,
    ToolCallStream,
    call_text,
    parse_call,
    split_tool_calls,
    tools_instructions,
)
from tests.gguf_helpers import CHAT_TEMPLATE

NAMES = ("get_weather", "add")
WEATHER = Tool(
    "get_weather",
    "The weather in a city",
    json.dumps({"type": "object", "properties": {"city": {"type": "string"}}}),
)


def _calls(pieces: list[str | ToolCall]) -> list[tuple[str, dict[str, object]]]:
    return [(p.name, json.loads(p.arguments)) for p in pieces if isinstance(p, ToolCall)]


# ------------------------------------------------------------------ reading


def test_a_whole_text_splits_into_content_and_calls_in_order() -> None:
    text = (
        "Let me check.\n"
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
        '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
    )
    content, calls = split_tool_calls(text, NAMES)
    assert content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("add", {"a": 1, "b": 2}),
    ]
    assert all(c.id.startswith("call_") for c in calls)
    assert calls[0].id != calls[1].id


def test_text_fed_in_any_pieces_gives_the_same_calls_and_content() -> None:
    text = (
        'Sure <tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call> and '
        "<tool_c is not a tag, <tool_call> neither is this</tool_call> end"
    )
    whole_content, whole_calls = split_tool_calls(text, NAMES)
    for size in (1, 2, 3, 7):
        stream = ToolCallStream(NAMES)
        pieces: list[str | ToolCall] = []
        for start in range(0, len(text), size):
            pieces += stream.feed(text[start : start + size])
        pieces += stream.finish()
        assert "".join(p for p in pieces if isinstance(p, str)) == whole_content
        assert _calls(pieces) == [(c.name, json.loads(c.arguments)) for c in whole_calls]
    assert whole_content == (
        "Sure  and <tool_c is not a tag, <tool_call> neither is this</tool_call> end"
    )


def test_text_that_may_start_a_call_is_held_back_until_it_cannot() -> None:
    stream = ToolCallStream(NAMES)
    assert stream.feed("Hello <tool") == ["Hello"]  # the space waits for what follows
    assert stream.feed("box") == [" <toolbox"]


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        '["get_weather"]',
        '{"name": "unknown", "arguments": {}}',
        '{"name": "add", "arguments": [1, 2]}',
        '{"arguments": {}}',
    ],
)
def test_a_block_that_is_no_call_of_an_offered_function_stays_text(body: str) -> None:
    text = f"<tool_call>{body}</tool_call>"
    assert split_tool_calls(text, NAMES) == (text, [])


def test_arguments_written_as_a_json_string_or_as_parameters_are_read() -> None:
    as_string = parse_call('{"name": "add", "arguments": "{\\"a\\": 1}"}', NAMES)
    as_parameters = parse_call('{"name": "add", "parameters": {"a": 1}}', NAMES)
    assert as_string is not None and json.loads(as_string.arguments) == {"a": 1}
    assert as_parameters is not None and json.loads(as_parameters.arguments) == {"a": 1}


def test_an_unclosed_call_at_the_end_counts_only_if_it_parses() -> None:
    _, calls = split_tool_calls('<tool_call>{"name": "add", "arguments": {}}', NAMES)
    assert [c.name for c in calls] == ["add"]
    cut = '<tool_call>{"name": "add", "argu'
    assert split_tool_calls(cut, NAMES) == (cut, [])


def test_whitespace_around_calls_is_no_content() -> None:
    text = '\n<tool_call>{"name": "add", "arguments": {}}</tool_call>\n\n'
    assert split_tool_calls(text, NAMES)[0] == ""
    assert split_tool_calls("  \n", NAMES) == ("  \n", [])


# ------------------------------------------------------------------ writing


def test_the_instructions_list_every_function_and_say_what_the_choice_demands() -> None:
    add = Tool("add", "", json.dumps({"type": "object"}))
    text = tools_instructions((WEATHER, add), "auto", None)
    listed = [json.loads(line) for line in text.splitlines() if line.startswith('{"type"')]
    assert [d["function"]["name"] for d in listed] == ["get_weather", "add"]
    assert listed[0]["function"]["parameters"]["properties"] == {"city": {"type": "string"}}
    assert "<tool_call>" in text and "</tool_call>" in text
    assert "must call the function add" in tools_instructions((WEATHER, add), "required", "add")
    assert "must call at least one" in tools_instructions((WEATHER,), "required", None)


def test_a_template_without_tools_gets_them_in_the_system_prompt_and_calls_as_text() -> None:
    request = GenerationRequest(
        messages=(
            Message("system", "Be brief."),
            Message("user", "Weather in Paris and Rome?"),
            Message(
                "assistant",
                "",
                tool_calls=(
                    ("call_1", "get_weather", '{"city": "Paris"}'),
                    ("call_2", "get_weather", '{"city": "Rome"}'),
                ),
            ),
            Message("tool", "18 C", tool_call_id="call_1"),
            Message("tool", "21 C", tool_call_id="call_2"),
        ),
        tools=(WEATHER,),
    )
    turns = plain_turns(request)
    assert [t["role"] for t in turns] == ["system", "user", "assistant", "user"]
    assert turns[0]["content"].startswith("Be brief.\n\n# Tools")
    assert turns[2]["content"] == "\n".join(
        [
            call_text("get_weather", '{"city": "Paris"}'),
            call_text("get_weather", '{"city": "Rome"}'),
        ]
    )
    assert turns[3]["content"] == (
        "<tool_response>\n18 C\n</tool_response>\n<tool_response>\n21 C\n</tool_response>"
    )
    # The test model's template renders them as plain turns.
    assert "<tool_response>" in render_chat(CHAT_TEMPLATE, turns)


def test_tool_choice_none_offers_no_functions() -> None:
    request = GenerationRequest(
        messages=(Message("user", "hi"),), tools=(WEATHER,), tool_choice="none"
    )
    assert plain_turns(request) == [{"role": "user", "content": "hi"}]


def test_a_template_that_reads_tools_gets_them_and_the_calls_in_transformers_shape() -> None:
    template = (
        "{% if tools %}{% for t in tools %}[{{ t.function.name }}]{% endfor %}{% endif %}"
        "{% for m in messages %}{{ m.role }}:"
        "{% if m.tool_calls %}{% for c in m.tool_calls %}"
        "{{ c.function.name }}{{ c.function.arguments | tojson }}{% endfor %}"
        "{% elif m.role == 'tool' %}{{ m.name }}#{{ m.tool_call_id }}={{ m.content }}"
        "{% else %}{{ m.content }}{% endif %};{% endfor %}"
    )
    assert "tools" in template_variables(template)
    assert "tools" not in template_variables(CHAT_TEMPLATE)
    request = GenerationRequest(
        messages=(
            Message("user", "Paris?"),
            Message("assistant", "", tool_calls=(("c1", "get_weather", '{"city":"Paris"}'),)),
            Message("tool", "18 C", tool_call_id="c1"),
        ),
        tools=(WEATHER,),
    )
    rendered = render_chat(
        template,
        template_messages(request),
        add_generation_prompt=False,
        tools=[{"type": "function", "function": {"name": "get_weather"}}],
    )
    assert rendered == (
        '[get_weather]user:Paris?;assistant:get_weather{"city": "Paris"};tool:get_weather#c1=18 C;'
    )
