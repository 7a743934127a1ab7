"""Grammars that constrain a completion: JSON output and tool calls, as llama.cpp GBNF.

A request's ``response_format`` (``json_object``, ``json_schema``) or a
``tool_choice`` that demands a call becomes a GBNF grammar here; the llama.cpp
engine puts it first in the sequence's sampler chain (``llama_sampling``), so
every sampled token keeps the output a prefix of something the grammar
accepts, and once it is whole only an end-of-generation token may follow.

With ``tool_choice: "auto"`` the model may answer in words or call a function,
so the tool-call grammar is *lazy*: the text is free until the model opens a
call (``<tool_call>``), and from there on the call must parse and name a real
function with valid arguments (``OutputGrammar.trigger``).

The JSON Schema to GBNF translation is llama-cpp-python's own
(``llama_cpp.llama_grammar.SchemaConverter``, a port of llama.cpp's
``json_schema_to_grammar``), not a converter of ours. It enforces types,
``properties``/``required``/``additionalProperties`` (left out: no extra
keys), ``enum``/``const``, ``anyOf``/``oneOf``/``allOf``, ``items``/
``prefixItems`` with ``minItems``/``maxItems``, ``minLength``/``maxLength``,
anchored ``pattern``s, the ``date``/``time``/``date-time``/``uuid`` formats and
local ``$ref``s. What it cannot enforce (numeric bounds, ``uniqueItems``, ...)
is listed in ``UNENFORCED``: a ``strict`` schema using any of it is refused,
so that "strict" keeps its promise that the output validates; a non-strict
one is followed as far as the grammar goes.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from maas.errors import InvalidRequestError
from maas.serving.generation_types import GenerationRequest, Tool
from maas.serving.tool_calls import CALL_CLOSE, CALL_OPEN

# JSON Schema keywords the converter ignores: output may break them.
UNENFORCED = frozenset(
    {
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "not",
        "if",
        "then",
        "else",
        "uniqueItems",
        "contains",
        "minContains",
        "maxContains",
        "minProperties",
        "maxProperties",
        "patternProperties",
        "propertyNames",
        "dependentRequired",
        "dependentSchemas",
        "dependencies",
        "unevaluatedProperties",
        "unevaluatedItems",
    }
)
ENFORCED_FORMATS = frozenset(
    {"date", "time", "date-time", "uuid", *(f"uuid{i}" for i in range(1, 6))}
)
# Keywords that constrain nothing.
_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$comment",
        "$schema",
        "$id",
        "deprecated",
        "readOnly",
        "writeOnly",
        "$defs",
        "definitions",
    }
)
# Keywords whose values are JSON data, not schemas.
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})
# Bounds on what a request may make us translate (the grammar is built per request).
MAX_SCHEMA_CHARS = 65_536
MAX_GRAMMAR_CHARS = 262_144

# A character of a JSON string: any code point but '"', '\\' and the control characters
# JSON forbids raw (json.loads refuses them; the converter's rule lets them through,
# llama.cpp's C++ converter does not), or an escape. Written as the ranges allowed,
# not as a negated set, so that surrogates and values past U+10FFFF, which llama.cpp's
# lenient UTF-8 decoding would pass, are out too: their bytes are no valid UTF-8 and
# would come out as U+FFFD, breaking maxLength and enums.
_JSON_CHAR_RULE = (
    r"char ::= [\x20-\x21\x23-\x5B\x5D-\x7E\x80-\uD7FF\uE000-\U0010FFFF]"
    r' | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'
)


@dataclass(frozen=True, slots=True)
class OutputGrammar:
    """What a completion must match: GBNF (root rule ``root``), from where on."""

    text: str
    # None: from the first token. Else the grammar applies from the first occurrence of
    # this text on (itself included), and whatever comes before it is free.
    trigger: str | None = None


def request_grammar(request: GenerationRequest) -> OutputGrammar | None:
    """The grammar a request's output must match, or None when it is free text.

    Raises ``InvalidRequestError`` naming ``response_format`` or ``tools`` for a
    schema that cannot be turned into a grammar.
    """
    if request.response_format == "json_object":
        return OutputGrammar(
            schema_grammar({"type": "object"}, strict=False, param="response_format")
        )
    if request.response_format == "json_schema":
        schema = _load(request.json_schema or "{}", "response_format")
        return OutputGrammar(schema_grammar(schema, strict=request.strict, param="response_format"))
    if request.calls_tools:
        tools = request.tools
        if request.tool_name is not None:
            tools = tuple(t for t in tools if t.name == request.tool_name)
        grammar = tool_call_grammar(tools, parallel=request.parallel_tool_calls)
        # "required": the answer is calls only; "auto": words, or calls once one opens.
        return OutputGrammar(grammar, None if request.tool_choice == "required" else CALL_OPEN)
    return None


def schema_grammar(schema: Any, *, strict: bool, param: str) -> str:
    """GBNF whose ``root`` is exactly the JSON texts ``schema`` accepts (as far as enforced)."""
    converter = _converter()
    schema = _split_type_lists(schema)
    if strict:
        _refuse_unenforced(schema, param)
    try:
        resolved = converter.resolve_refs(schema, "request")
        converter.visit(resolved, "")
        grammar: str = converter.format_grammar()
    except Exception as exc:  # the converter asserts and raises on what it cannot translate
        raise InvalidRequestError(
            f"{param}: the JSON schema cannot be turned into a grammar: {_reason(exc)}", param=param
        ) from exc
    return _bounded(grammar, param)


def tool_call_grammar(tools: Sequence[Tool], *, parallel: bool) -> str:
    """GBNF for one (or, ``parallel``, several) ``<tool_call>{"name": ..., "arguments": ...}``.

    Each call is one of ``tools``, its ``arguments`` valid for that function's
    ``parameters`` schema, so a call parses and names a real function whatever
    the model. Calls are separated by a newline.
    """
    if not tools:
        raise InvalidRequestError("tool_choice names no function in tools", param="tool_choice")
    converter = _converter()
    alternatives = []
    for index, tool in enumerate(tools):
        # Each function's definitions get names of their own (the converter names a
        # $ref's rule after the definition), and its $refs resolve against its schema.
        schema = _prefix_definitions(
            _split_type_lists(_load(tool.parameters, "tools")), f"t{index}-"
        )
        try:
            resolved = converter.resolve_refs(schema, f"tool-{index}")
            call = {
                "type": "object",
                "properties": {"name": {"const": tool.name}, "arguments": resolved},
                "required": ["name", "arguments"],
            }
            alternatives.append(converter.visit(call, f"call-{index}"))
        except Exception as exc:
            raise InvalidRequestError(
                f"tools: the parameters of function {tool.name!r} cannot be turned into a "
                f"grammar: {_reason(exc)}",
                param="tools",
            ) from exc
    call_rule = " | ".join(alternatives)
    lines = [
        converter.format_grammar(),
        f"tool-call ::= {_literal(CALL_OPEN)} ( {call_rule} ) {_literal(CALL_CLOSE)}",
        'root ::= tool-call ( "\\n" tool-call )*' if parallel else "root ::= tool-call",
    ]
    return _bounded("\n".join(lines), "tools")


def _converter() -> Any:
    from llama_cpp.llama_grammar import SchemaConverter

    return SchemaConverter(  # type: ignore[no-untyped-call]
        prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
    )


def _load(text: str, param: str) -> Any:
    if len(text) > MAX_SCHEMA_CHARS:
        raise InvalidRequestError(
            f"{param}: the JSON schema is over {MAX_SCHEMA_CHARS} characters", param=param
        )
    schema = json.loads(text)
    if not isinstance(schema, dict):
        raise InvalidRequestError(f"{param}: a JSON schema must be an object", param=param)
    return schema


def _refuse_unenforced(schema: Any, param: str) -> None:
    for path, keyword in _unenforced(schema, "#"):
        raise InvalidRequestError(
            f"{param}: strict schemas cannot use {keyword!r} (at {path}): the grammar "
            "cannot enforce it; drop it or send strict: false",
            param=param,
        )


def _passed_over(node: dict[str, Any]) -> str | None:
    """Keywords the converter would pass over because of what is beside them, if any."""
    keys = set(node) - _ANNOTATIONS
    for chooser in ("$ref", "anyOf", "oneOf", "allOf"):
        if chooser in keys and keys - {chooser}:
            return f"{chooser} beside {', '.join(sorted(keys - {chooser}))}"
    if "allOf" in keys:  # only the members' properties are merged
        return "allOf (use one object schema)"
    if "pattern" in keys and keys & {"minLength", "maxLength", "format"}:
        return "pattern beside minLength, maxLength or format"
    # (Keywords of one type say nothing about values of another type.)
    kind = node.get("type")
    sized = keys & {"minItems", "maxItems"} and not keys & {"items", "prefixItems"}
    if sized and kind in (None, "array"):
        return "minItems or maxItems without items"
    if keys & {"minLength", "maxLength"} and kind is None:
        return "minLength or maxLength without type: string"
    return None


def _unenforced(schema: Any, path: str) -> Iterator[tuple[str, str]]:
    """(where, what) for each keyword of ``schema`` and its subschemas the grammar would not
    enforce."""
    if not isinstance(schema, dict):
        return
    passed_over = _passed_over(schema)
    if passed_over is not None:
        yield path, passed_over
    for key, value in schema.items():
        if key in UNENFORCED:
            yield path, key
        if key == "format" and isinstance(value, str) and value not in ENFORCED_FORMATS:
            yield path, f"format: {value}"
        if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            for name, sub in value.items():
                yield from _unenforced(sub, f"{path}/{key}/{name}")
        elif key in ("anyOf", "oneOf", "allOf", "prefixItems") and isinstance(value, list):
            for i, sub in enumerate(value):
                yield from _unenforced(sub, f"{path}/{key}/{i}")
        elif key in ("items", "additionalProperties"):
            yield from _unenforced(value, f"{path}/{key}")


def _split_type_lists(schema: Any) -> Any:
    """A copy of ``schema``, ``{"type": [a, b], ...}`` as ``{"anyOf": [{"type": a, ...}, ...]}``.

    The converter turns a list of types into bare alternatives and drops the
    keywords beside it (``maxLength``, ``properties``, ...); spelled out per type
    they are kept. Keywords of other types do not apply to a type, so the
    schema means the same.
    """
    if isinstance(schema, list):
        return [_split_type_lists(item) for item in schema]
    if not isinstance(schema, dict):
        return copy.deepcopy(schema)
    out = {
        key: copy.deepcopy(value) if key in _DATA_KEYWORDS else _split_type_lists(value)
        for key, value in schema.items()
    }
    types = out.get("type")
    if isinstance(types, list) and not any(k in out for k in ("anyOf", "oneOf")):
        rest = {key: value for key, value in out.items() if key != "type"}
        out = {"anyOf": [{**copy.deepcopy(rest), "type": t} for t in types]}
    return out


def _prefix_definitions(schema: Any, prefix: str) -> Any:
    """``schema`` with its ``$defs``/``definitions`` renamed ``prefix + name``, refs to match."""
    if isinstance(schema, list):
        return [_prefix_definitions(item, prefix) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("$defs", "definitions") and isinstance(value, dict):
            out[key] = {prefix + name: _prefix_definitions(v, prefix) for name, v in value.items()}
        elif key == "$ref" and isinstance(value, str):
            for section in ("#/$defs/", "#/definitions/"):
                if value.startswith(section):
                    value = section + prefix + value[len(section) :]
            out[key] = value
        else:
            out[key] = _prefix_definitions(value, prefix)
    return out


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _literal(text: str) -> str:
    return json.dumps(text)  # a GBNF string literal escapes like a JSON one


def _bounded(grammar: str, param: str) -> str:
    grammar = "\n".join(
        _JSON_CHAR_RULE if line.startswith("char ::= ") else line for line in grammar.split("\n")
    )
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise InvalidRequestError(
            f"{param}: the grammar made from it is over {MAX_GRAMMAR_CHARS} characters",
            param=param,
        )
    return grammar
