"""Feedback on real predictions of a MiniLM sentiment classifier, in process (real SQLite)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from maas.api.app import create_app
from maas.config import Settings
from maas.registry.store import Registry
from tests.monitoring_streams import reviews, v2_texts
from tests.runtimes.test_explain import trained_sentiment_dir

INFER = "/v2/models/sentiment/infer"


@pytest.fixture(scope="module")
def sentiment_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_sentiment_dir(tmp_path_factory)


@pytest.fixture
def api(settings: Settings, registry: Registry, sentiment_dir: Path) -> Iterator[TestClient]:
    registry.push(
        sentiment_dir, "sentiment", task="text-classification", tags={"feedback_capture": "true"}
    )
    with TestClient(create_app(settings.model_copy(update={"monitoring": False}))) as client:
        yield client


@pytest.fixture
def headers(api: TestClient, settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.admin_key_file.read_text().strip()}"}


def classify(api: TestClient, headers: dict[str, str], texts: list[str]) -> tuple[str, list[str]]:
    r = api.post(INFER, json=v2_texts(texts), headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["x-maas-model-version"] == "sentiment:1"
    labels = next(o for o in r.json()["outputs"] if o["name"] == "label")["data"]
    return r.headers["x-maas-prediction-id"], labels


def test_labels_on_200_predictions_give_the_accuracy_computed_here(
    api: TestClient, headers: dict[str, str]
) -> None:
    pairs = reviews(200, seed=7)
    given: list[tuple[str, int, str, str]] = []  # id, index, predicted, label given
    for start in range(0, 200, 5):
        chunk = pairs[start : start + 5]
        prediction_id, labels = classify(api, headers, [t for t, _ in chunk])
        for index, ((_, truth), predicted) in enumerate(zip(chunk, labels, strict=True)):
            # Every ninth label is deliberately the other one: accuracy must count it.
            label = truth if (start + index) % 9 else ("neg" if truth == "pos" else "pos")
            given.append((prediction_id, index, predicted, label))
    for prediction_id, index, predicted, label in given:
        r = api.post(
            "/v1/feedback",
            json={"prediction_id": prediction_id, "index": index, "label": label},
            headers=headers,
        )
        assert r.status_code == 200, r.text
        assert r.json()["correct"] == (predicted == label)
    expected = sum(p == label for _, _, p, label in given) / len(given)
    assert 0.5 < expected < 1.0  # the flipped labels make some predictions wrong

    report = api.get("/admin/v1/models/sentiment/monitoring", headers=headers).json()
    feedback = report["versions"][0]["feedback"]
    assert feedback["labelled"] == 200
    assert math.isclose(feedback["accuracy"], expected)
    metrics = api.get("/metrics", headers=headers).text
    line = next(x for x in metrics.splitlines() if x.startswith("maas_live_accuracy{"))
    assert 'model="sentiment"' in line and 'version="1"' in line
    assert math.isclose(float(line.rsplit(" ", 1)[1]), expected)

    r = api.post(
        "/admin/v1/models/sentiment/feedback/export",
        json={"dataset": "sentiment-feedback"},
        headers=headers,
    )
    assert r.status_code == 200, r.text
    exported = r.json()
    assert exported["rows"] == 200
    dataset = exported["dataset"]
    assert dataset["ref"] == "sentiment-feedback:1"
    assert sum(dataset["splits"].values()) == 200
    assert sorted(dataset["label_names"]) == ["neg", "pos"]
    assert dataset["source"]["origin"] == {
        "kind": "feedback",
        "model": "sentiment",
        "versions": [1],
        "rows": 200,
        "since": None,
    }
    version = api.get("/admin/v1/models/sentiment-feedback/versions/1", headers=headers).json()
    assert version["parent"] == "sentiment:1"
    audit = api.get("/admin/v1/audit", params={"action": "feedback.export"}, headers=headers)
    assert [e["target"] for e in audit.json()] == ["/admin/v1/models/sentiment/feedback/export"]


def test_a_score_is_attached_and_averaged(api: TestClient, headers: dict[str, str]) -> None:
    prediction_id, _ = classify(api, headers, ["the movie was great"])
    r = api.post(
        "/v1/feedback", json={"prediction_id": prediction_id, "score": 0.7}, headers=headers
    )
    assert r.status_code == 200, r.text
    assert r.json()["score"] == 0.7 and r.json()["correct"] is None
    report = api.get("/admin/v1/models/sentiment/monitoring", headers=headers).json()
    assert report["versions"][0]["feedback"]["mean_score"] == pytest.approx(0.7)


def error_of(r: object) -> dict[str, object]:
    error: dict[str, object] = r.json()["error"]  # type: ignore[attr-defined]
    return error


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"prediction_id": "pred-0000000000000000deadbeef", "label": "pos"}, 404, "prediction_id"),
        ({"label": "pos"}, 400, "prediction_id"),
        ({"prediction_id": "{id}", "label": "pos", "score": 1.0}, 400, "label"),
        ({"prediction_id": "{id}"}, 400, "label"),
        ({"prediction_id": "{id}", "score": "high"}, 400, "score"),
        ({"prediction_id": "{id}", "label": ""}, 400, "label"),
        ({"prediction_id": "{id}", "index": 3, "label": "pos"}, 400, "index"),
        ({"prediction_id": "{id}", "index": -1, "label": "pos"}, 400, "index"),
        ({"prediction_id": "{id}", "label": "pos", "colour": "red"}, 400, "colour"),
    ],
)
def test_bad_feedback_is_refused_naming_the_field(
    api: TestClient,
    headers: dict[str, str],
    body: dict[str, object],
    status: int,
    param: str,
) -> None:
    prediction_id, _ = classify(api, headers, ["the food was awful", "the show was great"])
    if body.get("prediction_id") == "{id}":
        body = {**body, "prediction_id": prediction_id}
    r = api.post("/v1/feedback", json=body, headers=headers)
    assert r.status_code == status, r.text
    assert error_of(r)["param"] == param


def test_a_key_not_allowed_on_the_model_gets_a_404(
    api: TestClient, headers: dict[str, str]
) -> None:
    prediction_id, _ = classify(api, headers, ["the movie was great"])
    created = api.post(
        "/admin/v1/keys",
        json={"name": "other", "scopes": ["infer"], "models": ["someone-else"]},
        headers=headers,
    ).json()
    other = {"Authorization": f"Bearer {created['key']}"}
    r = api.post(
        "/v1/feedback", json={"prediction_id": prediction_id, "label": "pos"}, headers=other
    )
    assert r.status_code == 404
    assert error_of(r)["param"] == "model"


def test_feedback_needs_the_infer_scope(api: TestClient, headers: dict[str, str]) -> None:
    created = api.post(
        "/admin/v1/keys", json={"name": "reader", "scopes": ["read"]}, headers=headers
    ).json()
    r = api.post(
        "/v1/feedback",
        json={"prediction_id": "pred-x", "label": "pos"},
        headers={"Authorization": f"Bearer {created['key']}"},
    )
    assert r.status_code == 403


def test_export_without_captured_labels_says_what_is_missing(
    api: TestClient, headers: dict[str, str]
) -> None:
    r = api.post(
        "/admin/v1/models/sentiment/feedback/export", json={"dataset": "empty"}, headers=headers
    )
    assert r.status_code == 400
    assert "feedback_capture" in error_of(r)["message"]  # type: ignore[operator]
