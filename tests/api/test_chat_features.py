"""Sampling extras, structured output and tools on the chat routes: what is refused, and how.

In process on a tiny ``hf`` model (transformers), which honours none of them:
each is a 400 naming the field, before any byte is generated. Bodies that are
malformed whatever the model are refused by validation first. What GGUF
models do with them is tested through the ``openai`` client in
tests/e2e/test_openai_structured.py and tests/e2e/test_openai_tools.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from maas.api.app import create_app
from maas.config import Settings
from maas.registry.store import Registry
from tests.helpers import make_tiny_llm

USER = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("chat-features")
    model = make_tiny_llm(root / "m", arch="gpt2", seed=2)
    home = root / "home"
    registry = Registry(Settings(home=home))
    try:
        registry.push(model, "m", task="text-generation")
    finally:
        registry.close()
    return home


@pytest.fixture(scope="module")
def client(home: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(home=home))) as c:
        yield c


@pytest.fixture(scope="module")
def auth(home: Path) -> dict[str, str]:
    return {"Authorization": f"Bearer {Settings(home=home).admin_key_file.read_text().strip()}"}


def _refused(client: TestClient, auth: dict[str, str], path: str, body: dict[str, Any]) -> Any:
    r = client.post(path, json={"model": "m", "max_tokens": 4, **body}, headers=auth)
    assert r.status_code == 400, r.text
    return r.json()["error"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": -0.5}, "frequency_penalty"),
        ({"repetition_penalty": 1.2}, "repetition_penalty"),
        ({"min_p": 0.1}, "min_p"),
        ({"logit_bias": {"5": 10}}, "logit_bias"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format",
        ),
        ({"tools": [TOOL]}, "tools"),
        ({"tools": [TOOL], "tool_choice": "required"}, "tools"),
    ],
)
def test_what_only_gguf_versions_honour_is_a_400_naming_it_on_an_hf_version(
    client: TestClient, auth: dict[str, str], extra: dict[str, Any], param: str
) -> None:
    for stream in (False, True):
        error = _refused(
            client, auth, "/v1/chat/completions", {"messages": USER, "stream": stream, **extra}
        )
        assert error["param"] == param
        assert "GGUF" in error["message"]


def test_tools_offered_with_tool_choice_none_are_no_refusal(
    client: TestClient, auth: dict[str, str]
) -> None:
    body = {"model": "m", "messages": USER, "max_tokens": 2, "tools": [TOOL], "tool_choice": "none"}
    r = client.post("/v1/chat/completions", json=body, headers=auth)
    assert r.status_code == 200, r.text
    assert "tool_calls" not in r.json()["choices"][0]["message"]


def test_a_tool_round_trip_conversation_renders_on_any_template(
    client: TestClient, auth: dict[str, str]
) -> None:
    messages = [
        *USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
    ]
    body = {"model": "m", "messages": messages, "max_tokens": 2}
    r = client.post("/v1/chat/completions", json=body, headers=auth)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        ("/v1/chat/completions", {"logit_bias": {"a": 1}}, "logit_bias"),
        ("/v1/chat/completions", {"logit_bias": {"5": 101}}, "logit_bias"),
        ("/v1/chat/completions", {"min_p": 1.5}, "min_p"),
        ("/v1/chat/completions", {"repetition_penalty": 0}, "repetition_penalty"),
        ("/v1/chat/completions", {"response_format": {"type": "xml"}}, "response_format.type"),
        ("/v1/chat/completions", {"response_format": {"type": "json_schema"}}, "response_format"),
        (
            "/v1/chat/completions",
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a b"}}},
            "response_format.json_schema.name",
        ),
        ("/v1/chat/completions", {"tool_choice": "auto"}, "tool_choice"),
        (
            "/v1/chat/completions",
            {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        ("/v1/chat/completions", {"tools": [TOOL, TOOL]}, "tools"),
        ("/v1/chat/completions", {"tools": [{"type": "function"}]}, "tools.0.function"),
        (
            "/v1/chat/completions",
            {"tools": [TOOL], "response_format": {"type": "json_object"}},
            "response_format",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "tool", "content": "18 C"}]},
            "messages.0",
        ),
        (
            "/v1/chat/completions",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": "x",
                        "tool_calls": [
                            {
                                "id": "c",
                                "type": "function",
                                "function": {"name": "f", "arguments": "{}"},
                            }
                        ],
                    }
                ]
            },
            "messages.0",
        ),
        ("/v1/completions", {"prompt": "x", "tools": [TOOL]}, "tools"),
        (
            "/v1/completions",
            {"prompt": "x", "response_format": {"type": "json_object"}},
            "response_format",
        ),
    ],
)
def test_malformed_or_misplaced_fields_are_refused_naming_them(
    client: TestClient, auth: dict[str, str], path: str, extra: dict[str, Any], param: str
) -> None:
    body = {"messages": USER, **extra} if path.endswith("chat/completions") else extra
    assert _refused(client, auth, path, body)["param"] == param
