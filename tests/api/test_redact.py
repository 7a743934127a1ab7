"""``POST /v1/redact`` over a real app (in-process ASGI via TestClient)."""

# Chinese text is written with full-width punctuation.

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from maas.api import redact
from maas.api.app import create_app
from maas.config import Settings

MOBILE = "13812345678"
EMAIL = "zhang.san@example.com"
CARD = "4111 1111 1111 1111"


def redact_app(settings: Settings) -> FastAPI:
    app = create_app(settings)
    if "/v1/redact" not in app.openapi()["paths"]:
        app.include_router(redact.router)
        app.openapi_schema = None  # rebuilt with the new route on next request
    return app


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    with TestClient(redact_app(settings)) as c:
        yield c


@pytest.fixture
def headers(api: TestClient, settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.admin_key_file.read_text().strip()}"}


def post(api: TestClient, headers: dict[str, str], **body: Any) -> tuple[int, dict[str, Any]]:
    r = api.post("/v1/redact", json=body, headers=headers)
    return r.status_code, r.json()


def assert_openai_error(body: dict[str, Any], *, param: str | None, code: str) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == param
    assert body["error"]["code"] == code


def test_redact_a_string_returns_text_offsets_and_counts(
    api: TestClient, headers: dict[str, str]
) -> None:
    text = f"我的手机号是{MOBILE}，邮箱{EMAIL}谢谢"
    status, body = post(api, headers, input=text)
    assert status == 200, body
    assert body == {
        "object": "redaction",
        "data": [
            {
                "index": 0,
                "text": "我的手机号是[PHONE]，邮箱[EMAIL]谢谢",
                "found": [
                    {"kind": "cn_mobile", "start": 6, "end": 17},
                    {"kind": "email", "start": 20, "end": 41},
                ],
            }
        ],
        "counts": {"cn_mobile": 1, "email": 1},
    }
    assert text[6:17] == MOBILE and text[20:41] == EMAIL


def test_redact_a_list_keeps_order_and_sums_counts(
    api: TestClient, headers: dict[str, str]
) -> None:
    status, body = post(
        api, headers, input=[f"call {MOBILE}", "nothing here", f"card {CARD}, backup {MOBILE}"]
    )
    assert status == 200, body
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    assert [item["text"] for item in body["data"]] == [
        "call [PHONE]",
        "nothing here",
        "card [BANK_CARD], backup [PHONE]",
    ]
    assert body["data"][1]["found"] == []
    assert body["counts"] == {"bank_card": 1, "cn_mobile": 2}


def test_the_response_never_echoes_raw_values(api: TestClient, headers: dict[str, str]) -> None:
    r = api.post("/v1/redact", json={"input": [f"{MOBILE} {EMAIL}", CARD]}, headers=headers)
    assert r.status_code == 200
    for value in (MOBILE, EMAIL, CARD, "4111"):
        assert value not in r.text


def test_kinds_limits_what_is_redacted(api: TestClient, headers: dict[str, str]) -> None:
    status, body = post(api, headers, input=f"{MOBILE} {EMAIL}", kinds=["email"])
    assert status == 200, body
    assert body["data"][0]["text"] == f"{MOBILE} [EMAIL]"
    assert body["counts"] == {"email": 1}


def test_unknown_kind_is_400_on_kinds(api: TestClient, headers: dict[str, str]) -> None:
    status, body = post(api, headers, input="x", kinds=["email", "ssn"])
    assert status == 400
    assert_openai_error(body, param="kinds", code="invalid_request")
    assert "ssn" in body["error"]["message"]


def test_empty_kinds_is_400_on_kinds(api: TestClient, headers: dict[str, str]) -> None:
    status, body = post(api, headers, input="x", kinds=[])
    assert status == 400
    assert_openai_error(body, param="kinds", code="invalid_request")


def test_unknown_field_is_400(api: TestClient, headers: dict[str, str]) -> None:
    status, body = post(api, headers, input="x", model="m")
    assert status == 400
    assert_openai_error(body, param="model", code="invalid_request")


def test_input_of_the_wrong_type_is_400(api: TestClient, headers: dict[str, str]) -> None:
    status, body = post(api, headers, input=123)
    assert status == 400
    assert body["error"]["param"].startswith("input")


def test_input_over_one_mebibyte_is_413(api: TestClient, headers: dict[str, str]) -> None:
    half = "a" * (redact.MAX_INPUT_BYTES // 2 + 1)
    status, body = post(api, headers, input=[half, half])
    assert status == 413
    assert_openai_error(body, param="input", code="payload_too_large")


def test_missing_key_is_401(api: TestClient) -> None:
    r = api.post("/v1/redact", json={"input": MOBILE})
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert_openai_error(r.json(), param=None, code="unauthorized")
    assert MOBILE not in r.text


def test_redact_is_in_the_openapi_schema(api: TestClient, headers: dict[str, str]) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    assert "post" in paths["/v1/redact"]
    assert paths["/v1/redact"]["post"]["tags"] == ["safety"]
