"""Errors a newcomer meets first say what to do: bad JSON, a missing Content-Type, a
capitalised model name. OpenAI's shape on ``/v1`` and ``/admin``, V2's on ``/v2``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from maas.errors import InvalidRequestError
from maas.registry.refs import ModelRef, validate_model_name
from maas.registry.store import Registry
from tests.helpers import make_onnx_file

# Missing comma after "hello": the stdlib parser stops at line 1, column 38.
BROKEN = b'{"model": "minilm", "input": "hello" "encoding_format": "float"}'
BROKEN_AT = "line 1, column 38: Expecting ',' delimiter"
FORM = "application/x-www-form-urlencoded"  # what `curl -d` sends


def _openai_error(response: Any) -> dict[str, object]:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert isinstance(error, dict)
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/chat/completions", "/admin/v1/keys"])
def test_a_body_that_is_not_json_gets_its_line_and_column_and_no_param(
    client: TestClient, auth: dict[str, str], path: str
) -> None:
    r = client.post(path, content=BROKEN, headers={**auth, "Content-Type": "application/json"})
    error = _openai_error(r)
    assert error["message"] == f"the request body is not valid JSON ({BROKEN_AT})"
    assert error["param"] is None


def test_a_v2_body_that_is_not_json_gets_its_line_and_column(
    client: TestClient, auth: dict[str, str]
) -> None:
    r = client.post("/v2/models/minilm/infer", content=BROKEN, headers=auth)
    assert r.status_code == 400
    assert r.json() == {"error": f"the request body is not valid JSON ({BROKEN_AT})"}


@pytest.mark.parametrize("content_type", [FORM, "text/plain", None])
def test_a_json_body_without_a_json_content_type_is_read_as_json(
    client: TestClient, auth: dict[str, str], content_type: str | None
) -> None:
    headers = {**auth, **({"Content-Type": content_type} if content_type else {})}
    redacted = client.post(
        "/v1/redact", content=b'{"input": "mail me at ann@example.com"}', headers=headers
    )
    assert redacted.status_code == 200, redacted.text
    assert redacted.json()["counts"] == {"email": 1}
    created = client.post(
        "/admin/v1/keys", content=b'{"name": "ci", "scopes": ["read"]}', headers=headers
    )
    assert created.status_code == 201, created.text
    assert created.json()["info"]["name"] == "ci"


def test_a_json_embeddings_body_sent_as_a_form_reaches_the_model(
    client: TestClient, auth: dict[str, str], registry: Registry, tmp_path: Path
) -> None:
    registry.push(make_onnx_file(tmp_path / "m" / "model.onnx").parent, "affine", task="tensor")
    r = client.post(
        "/v1/embeddings",
        content=b'{"model": "affine", "input": "hello"}',
        headers={**auth, "Content-Type": FORM},
    )
    # Parsed, validated and resolved: the only complaint left is the model's task.
    error = _openai_error(r)
    assert "is for tensor, not embeddings" in str(error["message"])
    assert error["param"] == "model"


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/chat/completions", "/admin/v1/keys"])
@pytest.mark.parametrize("content_type", [FORM, None])
def test_a_body_that_is_not_json_nor_sent_as_json_asks_for_the_content_type(
    client: TestClient, auth: dict[str, str], path: str, content_type: str | None
) -> None:
    headers = {**auth, **({"Content-Type": content_type} if content_type else {})}
    r = client.post(path, content=b"model=minilm&input=hello", headers=headers)
    error = _openai_error(r)
    assert "send Content-Type: application/json" in str(error["message"])
    assert "line 1, column 1: Expecting value" in str(error["message"])
    assert error["param"] is None


def test_a_json_body_that_is_not_an_object_says_it_must_be_one(
    client: TestClient, auth: dict[str, str]
) -> None:
    r = client.post("/v1/chat/completions", json=["hello"], headers=auth)
    assert _openai_error(r)["message"] == "the request body must be a JSON object"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/embeddings", {"model": "MiniLM", "input": "hello"}),
        (
            "/v1/chat/completions",
            {"model": "MiniLM", "messages": [{"role": "user", "content": "hi"}]},
        ),
        ("/v1/completions", {"model": "MiniLM", "prompt": "hi"}),
    ],
)
def test_a_capitalised_model_in_a_body_suggests_the_lower_case_name_under_param_model(
    client: TestClient, auth: dict[str, str], path: str, body: dict[str, object]
) -> None:
    error = _openai_error(client.post(path, json=body, headers=auth))
    assert "model names are lower case: did you mean 'minilm'?" in str(error["message"])
    assert error["param"] == "model"


def test_a_capitalised_model_in_a_v2_path_suggests_the_lower_case_name(
    client: TestClient, auth: dict[str, str]
) -> None:
    for r in (
        client.get("/v2/models/MiniLM", headers=auth),
        client.get("/v2/models/MiniLM/versions/1", headers=auth),
    ):
        assert r.status_code == 400
        assert "model names are lower case: did you mean 'minilm'?" in r.json()["error"]


def test_a_capitalised_reference_names_the_model_param_and_a_bare_name_the_name_param() -> None:
    for text in ("MiniLM", "MiniLM:2", "MiniLM@production"):
        with pytest.raises(InvalidRequestError, match="did you mean 'minilm'") as parsed:
            ModelRef.parse(text)
        assert parsed.value.param == "model"
    with pytest.raises(InvalidRequestError, match="did you mean 'minilm'") as named:
        validate_model_name("MiniLM")
    assert named.value.param == "name"


def test_a_name_that_lower_case_cannot_fix_lists_the_allowed_characters() -> None:
    with pytest.raises(InvalidRequestError, match="use 1-64 characters of a-z") as info:
        ModelRef.parse("Mini LM")
    assert "did you mean" not in info.value.message
