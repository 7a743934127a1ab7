"""Tool calls on GGUF models through the official ``openai`` client, round trip included.

A tiny random Llama written as a Q8_0 GGUF here is served by a real server.
With ``tool_choice`` "required" or a named function the output is constrained
by a grammar, so even random weights produce a valid call of an offered
function with arguments that validate against its schema. Marked slow: the
same round trip with the real SmolLM2.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import LiveServer, serve_pushed
from tests.gguf_helpers import write_tiny_llama_gguf

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llama_cpp")

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "pattern": "^[A-Za-z ]{1,20}$"},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
ADD = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
TOOLS = [
    {
        "type": "function",
        "function": {"name": name, "description": f"{name} tool", "parameters": schema},
    }
    for name, schema in SCHEMAS.items()
]
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    # The tools' descriptions make long prompts for a tokenizer of 320 tokens.
    path = tmp_path_factory.mktemp("gguf") / "tiny.Q8_0.gguf"
    write_tiny_llama_gguf(path, context=2048)
    env = {"MAAS_KV_CACHE_TOKENS": "8192"}
    for live in serve_pushed(tmp_path_factory.mktemp("tiny-home"), path, "tiny", env):
        with openai.OpenAI(base_url=f"{live.url}/v1", api_key=live.key) as c:
            yield c


def _check_call(call: Any, names: tuple[str, ...] = tuple(SCHEMAS)) -> None:
    assert call.type == "function"
    assert call.id.startswith("call_")
    assert call.function.name in names
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_a_required_call_then_its_result_then_an_answer_round_trip(client: Any) -> None:
    first = client.chat.completions.create(
        model="tiny",
        messages=QUESTION,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=300,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    _check_call(call)

    messages = [
        *QUESTION,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees, sunny"},
    ]
    final = client.chat.completions.create(
        model="tiny", messages=messages, tools=TOOLS, temperature=0, max_tokens=16
    )
    answer = final.choices[0]
    assert answer.finish_reason in ("stop", "length")
    assert answer.message.tool_calls is None
    assert isinstance(answer.message.content, str)
    assert final.usage.prompt_tokens > first.usage.prompt_tokens  # the call and result were read


def test_a_named_function_is_the_one_called(client: Any) -> None:
    reply = client.chat.completions.create(
        model="tiny",
        messages=QUESTION,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "add"}},
        temperature=1.0,
        seed=3,
        n=4,
        max_tokens=300,
    )
    for choice in reply.choices:
        assert choice.finish_reason == "tool_calls"
        assert choice.message.tool_calls
        for call in choice.message.tool_calls:
            _check_call(call, ("add",))


def test_parallel_calls_each_validate(client: Any) -> None:
    reply = client.chat.completions.create(
        model="tiny",
        messages=QUESTION,
        tools=TOOLS,
        tool_choice="required",
        temperature=1.0,
        n=4,
        max_tokens=600,
    )
    for choice in reply.choices:
        assert choice.finish_reason == "tool_calls"
        for call in choice.message.tool_calls:
            _check_call(call)
        ids = [call.id for call in choice.message.tool_calls]
        assert len(set(ids)) == len(ids)


def test_a_streamed_call_arrives_as_tool_call_deltas_of_the_same_call(client: Any) -> None:
    asked = {
        "model": "tiny",
        "messages": QUESTION,
        "tools": TOOLS,
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "temperature": 0,
        "max_tokens": 300,
    }
    whole = client.chat.completions.create(**asked).choices[0].message.tool_calls[0]
    calls: dict[int, dict[str, str]] = {}
    content = ""
    finish = None
    for chunk in client.chat.completions.create(**asked, stream=True):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for part in delta.tool_calls or ():
            call = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += part.id or ""
            call["name"] += part.function.name or ""
            call["arguments"] += part.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert content == ""
    assert list(calls) == [0]
    assert calls[0]["name"] == whole.function.name
    assert json.loads(calls[0]["arguments"]) == json.loads(whole.function.arguments)


def test_auto_leaves_a_model_that_calls_nothing_answering_in_text(client: Any) -> None:
    reply = client.chat.completions.create(
        model="tiny", messages=QUESTION, tools=TOOLS, temperature=0, max_tokens=12
    )
    choice = reply.choices[0]
    assert choice.message.tool_calls is None
    assert choice.finish_reason in ("stop", "length")


# ------------------------------------------------------------ slow: SmolLM2


@pytest.fixture(scope="module")
def smollm2(smollm2_live: LiveServer) -> Iterator[Any]:
    with openai.OpenAI(base_url=f"{smollm2_live.url}/v1", api_key=smollm2_live.key) as c:
        yield c


@pytest.mark.slow
def test_smollm2_calls_a_function_reads_its_result_and_answers(smollm2: Any) -> None:
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "the city's name"}},
                "required": ["city"],
            },
        },
    }
    first = smollm2.chat.completions.create(
        model="smollm2",
        messages=QUESTION,
        tools=[weather],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=64,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)

    messages = [
        *QUESTION,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees Celsius, sunny"},
    ]
    final = smollm2.chat.completions.create(
        model="smollm2", messages=messages, tools=[weather], temperature=0, max_tokens=48
    )
    answer = final.choices[0]
    assert answer.finish_reason == "stop"
    assert answer.message.tool_calls is None
    assert answer.message.content
