"""``POST /v1/explain`` over a real app (in-process ASGI via TestClient) and a real classifier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from maas.api import explain
from maas.api.app import create_app
from maas.config import Settings
from maas.registry.store import Registry
from tests.helpers import make_onnx_file
from tests.runtimes.test_explain import trained_sentiment_dir


def explain_app(settings: Settings) -> FastAPI:
    app = create_app(settings)
    if "/v1/explain" not in app.openapi()["paths"]:
        app.include_router(explain.router)
        app.openapi_schema = None  # rebuilt with the new route on next request
    return app


@pytest.fixture(scope="module")
def sentiment_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_sentiment_dir(tmp_path_factory)


@pytest.fixture
def api(settings: Settings, registry: Registry, sentiment_dir: Path) -> Iterator[TestClient]:
    registry.push(sentiment_dir, "sentiment", task="text-classification")
    with TestClient(explain_app(settings)) as c:
        yield c


@pytest.fixture
def headers(api: TestClient, settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.admin_key_file.read_text().strip()}"}


def post(api: TestClient, headers: dict[str, str], **body: Any) -> tuple[int, dict[str, Any]]:
    r = api.post("/v1/explain", json=body, headers=headers)
    return r.status_code, r.json()


def assert_openai_error(body: dict[str, Any], *, param: str | None) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    assert body["error"]["param"] == param


def test_explain_returns_the_documented_shape_with_the_cue_word_on_top(
    api: TestClient, headers: dict[str, str]
) -> None:
    status, body = post(api, headers, model="sentiment", input="the concert was great")
    assert status == 200, body
    assert set(body) == {
        "object",
        "model",
        "version",
        "target",
        "probability",
        "tokens",
        "convergence_delta",
        "method",
    }
    assert body["object"] == "explanation" and body["method"] == "integrated_gradients"
    assert body["model"] == "sentiment" and body["version"] == 1
    assert body["target"] == "pos" and body["probability"] > 0.9
    tokens = [t["token"] for t in body["tokens"]]
    assert tokens == ["[CLS]", "the", "concert", "was", "great", "[SEP]"]
    top = max(body["tokens"], key=lambda t: abs(t["attribution"]))
    assert top["token"] == "great" and top["attribution"] > 0
    assert abs(body["convergence_delta"]) < 0.05


def test_target_by_name_and_index_and_steps_are_honoured(
    api: TestClient, headers: dict[str, str]
) -> None:
    text = "the food was awful"
    _, by_name = post(api, headers, model="sentiment:1", input=text, target="pos", steps=64)
    _, by_index = post(api, headers, model="sentiment:1", input=text, target=1, steps=64)
    assert by_name == by_index
    assert by_name["target"] == "pos" and by_name["probability"] < 0.1
    top = max(by_name["tokens"], key=lambda t: abs(t["attribution"]))
    assert top["token"] == "awful" and top["attribution"] < 0


@pytest.mark.parametrize("target", ["positive", 7, True])
def test_unknown_target_is_a_400_naming_target(
    api: TestClient, headers: dict[str, str], target: Any
) -> None:
    status, body = post(api, headers, model="sentiment", input="great", target=target)
    assert status == 400
    assert_openai_error(body, param="target")


def test_unknown_model_is_a_404_in_openai_error_shape(
    api: TestClient, headers: dict[str, str]
) -> None:
    status, body = post(api, headers, model="no-such-model", input="great")
    assert status == 404
    assert_openai_error(body, param="model")
    assert body["error"]["code"] == "not_found"


def test_model_of_another_task_is_a_400_naming_the_task(
    api: TestClient, headers: dict[str, str], registry: Registry, tmp_path: Path
) -> None:
    onnx_dir = make_onnx_file(tmp_path / "affine" / "model.onnx").parent
    registry.push(onnx_dir, "affine", task="tensor")
    status, body = post(api, headers, model="affine", input="great")
    assert status == 400
    assert_openai_error(body, param="model")
    assert "tensor" in body["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "sentiment", "input": ""}, "input"),
        ({"model": "sentiment"}, "input"),
        ({"model": "sentiment", "input": "great", "steps": 0}, "steps"),
        ({"model": "sentiment", "input": "great", "steps": 257}, "steps"),
        ({"model": "sentiment", "input": "great", "stpes": 8}, "stpes"),
    ],
)
def test_invalid_bodies_are_a_400_naming_the_field(
    api: TestClient, headers: dict[str, str], body: dict[str, Any], param: str
) -> None:
    status, answer = post(api, headers, **body)
    assert status == 400
    assert_openai_error(answer, param=param)


def test_missing_key_is_a_401(api: TestClient) -> None:
    r = api.post("/v1/explain", json={"model": "sentiment", "input": "great"})
    assert r.status_code == 401
    assert_openai_error(r.json(), param=None)
    assert r.headers["www-authenticate"] == "Bearer"


def test_explain_is_in_the_openapi_schema(api: TestClient, headers: dict[str, str]) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    assert "post" in paths["/v1/explain"]
