"""Structured output (``response_format``) on GGUF models, through the official ``openai`` client.

A tiny random Llama written as a Q8_0 GGUF here is served by a real server. Its
weights are random, so the output is valid JSON only because the grammar
allows nothing else: the best test that the constraint, not the model, makes
it valid. Marked slow: the same with the real SmolLM2.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.e2e.conftest import LiveServer, serve_pushed
from tests.gguf_helpers import write_tiny_llama_gguf

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llama_cpp")

# Strings by pattern, ASCII: a random model also emits byte sequences that are no
# valid UTF-8 (overlong forms, which llama.cpp's grammar reads as characters), and
# those come out as U+FFFD, longer than the grammar counted (docs/generation.md).
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z]{1,12}$"},
        "age": {"type": "integer"},
        "admin": {"type": "boolean"},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
        "nickname": {"type": ["string", "null"], "pattern": "^[A-Z][a-z]{0,7}$"},
    },
    "required": ["name", "age", "admin", "color", "tags"],
    "additionalProperties": False,
}
MESSAGES = [{"role": "user", "content": "Describe a person as JSON."}]


def _json_schema(schema: dict[str, Any], *, strict: bool = False) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": strict}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    path = tmp_path_factory.mktemp("gguf") / "tiny.Q8_0.gguf"
    write_tiny_llama_gguf(path, context=1024)
    # Flash attention off: a streamed answer is compared with the same request's whole
    # answer, and with it on greedy tokens depend a little on where a sequence's cells
    # landed (a second request reuses the first's prompt cells: docs/generation.md).
    env = {"MAAS_KV_CACHE_TOKENS": "4096", "MAAS_FLASH_ATTENTION": "false"}
    yield from serve_pushed(tmp_path_factory.mktemp("tiny-home"), path, "tiny", env)


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[Any]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.key) as c:
        yield c


def test_twenty_json_schema_objects_from_a_random_model_all_validate(client: Any) -> None:
    def four(seed: int) -> list[Any]:
        reply = client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            response_format=_json_schema(PERSON),
            n=5,
            temperature=1.0,
            seed=seed,
            max_tokens=400,
        )
        return list(reply.choices)

    with ThreadPoolExecutor(4) as pool:
        choices = [c for batch in pool.map(four, range(4)) for c in batch]
    assert len(choices) == 20
    objects = []
    for choice in choices:
        assert choice.finish_reason == "stop"
        value = json.loads(choice.message.content)
        jsonschema.validate(value, PERSON)
        objects.append(value)
    assert len({json.dumps(o, sort_keys=True) for o in objects}) > 1  # sampled, not one answer


def test_a_streamed_json_schema_answer_is_the_same_valid_object(client: Any) -> None:
    asked = {
        "model": "tiny",
        "messages": MESSAGES,
        "response_format": _json_schema(PERSON, strict=True),
        "temperature": 0,
        "max_tokens": 400,
    }
    whole = client.chat.completions.create(**asked).choices[0].message.content
    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(**asked, stream=True)
        if chunk.choices
    )
    assert streamed == whole
    jsonschema.validate(json.loads(whole), PERSON)


def test_json_object_output_is_a_json_object_or_honestly_cut(client: Any) -> None:
    reply = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=300,
    )
    choice = reply.choices[0]
    text = choice.message.content
    assert text.startswith("{")
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # any JSON object is allowed, so a random model may nest past max_tokens
        assert choice.finish_reason == "length"


def test_max_tokens_that_cut_the_object_say_length(client: Any) -> None:
    reply = client.chat.completions.create(
        model="tiny", messages=MESSAGES, response_format=_json_schema(PERSON), max_tokens=6
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "length"
    assert reply.usage.completion_tokens == 6
    with pytest.raises(json.JSONDecodeError):
        json.loads(choice.message.content)


@pytest.mark.parametrize(
    ("response_format", "words"),
    [
        (_json_schema({"type": "string", "pattern": "[a-z]+"}), "grammar"),
        (_json_schema({"type": "integer", "minimum": 0}, strict=True), "minimum"),
        ({"type": "json_schema"}, "json_schema"),
        ({"type": "yaml"}, "type"),
    ],
)
def test_schemas_that_make_no_grammar_are_400s_naming_response_format(
    client: Any, response_format: dict[str, Any], words: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="tiny", messages=MESSAGES, response_format=response_format, max_tokens=8
        )
    error = caught.value.body
    assert error["param"].startswith("response_format")
    assert words in error["message"]


# ------------------------------------------------------------ slow: SmolLM2


@pytest.fixture(scope="module")
def smollm2(smollm2_live: LiveServer) -> Iterator[Any]:
    with openai.OpenAI(base_url=f"{smollm2_live.url}/v1", api_key=smollm2_live.key) as c:
        yield c


@pytest.mark.slow
def test_smollm2_answers_a_json_schema_with_a_valid_object(smollm2: Any) -> None:
    capital = {
        "type": "object",
        "properties": {"country": {"type": "string"}, "capital": {"type": "string"}},
        "required": ["country", "capital"],
        "additionalProperties": False,
    }
    reply = smollm2.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "What is the capital of France? Answer in JSON."}],
        response_format=_json_schema(capital, strict=True),
        temperature=0,
        max_tokens=64,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    value = json.loads(choice.message.content)
    jsonschema.validate(value, capital)
