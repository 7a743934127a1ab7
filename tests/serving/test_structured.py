"""Grammars from JSON Schemas and tool definitions (llama-cpp-python's converter underneath).

What the grammars make a model write is tested on a real llama.cpp model in
tests/serving/test_llama_sampling.py and tests/e2e/test_openai_structured.py;
these check what is built, and what is refused with a 400 naming the field.
"""

from __future__ import annotations

import json

import pytest

from maas.errors import InvalidRequestError
from maas.serving.generation_types import GenerationRequest, Message, Tool
from maas.serving.structured import request_grammar, schema_grammar, tool_call_grammar

pytest.importorskip("llama_cpp")

MESSAGES = (Message("user", "hi"),)


def _rules(grammar: str) -> dict[str, str]:
    return dict(line.split(" ::= ", 1) for line in grammar.splitlines())


def test_json_object_is_any_object_at_the_root() -> None:
    grammar = request_grammar(GenerationRequest(messages=MESSAGES, response_format="json_object"))
    assert grammar is not None and grammar.trigger is None
    assert _rules(grammar.text)["root"] == "object"


def test_free_text_has_no_grammar_and_auto_tools_a_lazy_one_that_waits_for_a_call() -> None:
    tools = (Tool("f"),)
    assert request_grammar(GenerationRequest(messages=MESSAGES)) is None
    assert (
        request_grammar(GenerationRequest(messages=MESSAGES, tools=tools, tool_choice="none"))
        is None
    )
    auto = request_grammar(GenerationRequest(messages=MESSAGES, tools=tools))
    required = request_grammar(
        GenerationRequest(messages=MESSAGES, tools=tools, tool_choice="required")
    )
    assert auto is not None and required is not None
    assert auto.trigger == "<tool_call>" and required.trigger is None
    assert auto.text == required.text


def test_json_strings_never_hold_raw_control_characters() -> None:
    rules = _rules(schema_grammar({"type": "string"}, strict=False, param="response_format"))
    assert rules["char"].startswith(r"[\x20-\x21\x23-\x5B")


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}},
        {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        {"type": "string", "format": "email"},
        {"$defs": {"x": {"type": "number", "multipleOf": 2}}, "$ref": "#/$defs/x"},
        # Keywords the converter passes over because of what stands beside them:
        {"type": "array", "maxItems": 2},
        {"type": "string", "pattern": "^a+$", "maxLength": 3},
        {"$defs": {"x": {"type": "string"}}, "$ref": "#/$defs/x", "maxLength": 2},
        {"anyOf": [{"type": "string"}, {"type": "integer"}], "maxLength": 2},
        {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}}]},
    ],
)
def test_strict_schemas_that_use_keywords_the_grammar_cannot_enforce_are_refused(
    schema: dict[str, object],
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        schema_grammar(schema, strict=True, param="response_format")
    assert caught.value.param == "response_format"
    assert "strict" in caught.value.message
    schema_grammar(schema, strict=False, param="response_format")  # followed as far as it goes


def test_a_list_of_types_keeps_the_keywords_beside_it() -> None:
    schema = {"type": ["string", "null"], "maxLength": 2}
    rules = _rules(schema_grammar(schema, strict=True, param="response_format"))
    assert rules["root"] == "alternative-0 | null"
    assert rules["alternative-0"] == '"\\"" (char (char)?)? "\\"" space'


def test_a_property_named_like_a_keyword_is_no_keyword() -> None:
    schema = {"type": "object", "properties": {"minimum": {"type": "integer"}}}
    assert "minimum" in schema_grammar(schema, strict=True, param="response_format")


def test_a_schema_the_converter_cannot_translate_is_a_400_naming_the_field() -> None:
    unanchored = {"type": "string", "pattern": "[a-z]+"}
    with pytest.raises(InvalidRequestError) as caught:
        schema_grammar(unanchored, strict=False, param="response_format")
    assert caught.value.param == "response_format"
    remote = {"$ref": "https://example.com/schema.json"}
    with pytest.raises(InvalidRequestError):
        schema_grammar(remote, strict=False, param="response_format")


def test_a_tool_call_names_an_offered_function_with_its_own_arguments() -> None:
    item_a = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    item_b = {"type": "object", "properties": {"y": {"type": "boolean"}}, "required": ["y"]}
    tools = (
        Tool("a", parameters=json.dumps({"$defs": {"Item": item_a}, "$ref": "#/$defs/Item"})),
        Tool("b", parameters=json.dumps({"$defs": {"Item": item_b}, "$ref": "#/$defs/Item"})),
    )
    rules = _rules(tool_call_grammar(tools, parallel=False))
    assert rules["root"] == "tool-call"
    assert rules["tool-call"] == '"<tool_call>" ( call-0 | call-1 ) "</tool_call>"'
    # Definitions of the same name in two functions stay apart.
    assert "integer" in rules["t0-Item-x-kv"] and "boolean" in rules["t1-Item-y-kv"]
    assert rules["call-0-name"] == '"\\"a\\""'


def test_a_named_tool_choice_allows_only_that_function_and_parallel_calls_repeat() -> None:
    tools = (Tool("a"), Tool("b"))
    named = GenerationRequest(messages=MESSAGES, tools=tools, tool_choice="required", tool_name="b")
    grammar = request_grammar(named)
    assert grammar is not None
    rules = _rules(grammar.text)
    assert rules["tool-call"] == '"<tool_call>" ( call-0 ) "</tool_call>"'
    assert rules["call-0-name"] == '"\\"b\\""'
    assert rules["root"] == 'tool-call ( "\\n" tool-call )*'
