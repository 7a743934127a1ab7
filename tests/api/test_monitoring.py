"""Drift monitoring of a real MiniLM sentiment classifier, with a real webhook receiver.

The server runs in process (its event loop in TestClient's thread, so the
monitor's background analyses and the webhook sender run as they do in
``maas serve``); the receiver is a real HTTP server on a local port.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from maas.api.app import create_app
from maas.config import Settings
from maas.registry.store import Registry
from maas.serving.monitoring import DriftMonitor
from tests.monitoring_streams import reviews, shifted, v2_texts
from tests.runtimes.test_explain import trained_sentiment_dir

WINDOW = 60
SECRET = "webhook-secret"
INFER = "/v2/models/sentiment/infer"


@pytest.fixture(scope="module")
def sentiment_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_sentiment_dir(tmp_path_factory)


class Receiver:
    """A local HTTP server that keeps every POST it gets (headers, body)."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append((dict(self.headers.items()), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def api(
    settings: Settings, registry: Registry, sentiment_dir: Path, receiver: Receiver
) -> Iterator[TestClient]:
    registry.push(sentiment_dir, "sentiment", task="text-classification")
    watched = settings.model_copy(
        update={
            "monitoring_window": WINDOW,
            "monitoring_interval_seconds": 0.0,
            "alert_webhook_url": receiver.url,
            "alert_webhook_secret": SecretStr(SECRET),
            "feedback": False,
        }
    )
    with TestClient(create_app(watched)) as client:
        yield client


@pytest.fixture
def headers(api: TestClient, settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.admin_key_file.read_text().strip()}"}


def send(api: TestClient, headers: dict[str, str], texts: list[str]) -> None:
    r = api.post(INFER, json=v2_texts(texts), headers=headers)
    assert r.status_code == 200, r.text
    monitor: DriftMonitor = api.app.state.dataplane.monitor  # type: ignore[attr-defined]
    deadline = time.monotonic() + 60
    while monitor.busy:  # the analysis this request started, if any, has finished
        assert time.monotonic() < deadline
        time.sleep(0.01)


def report(api: TestClient, headers: dict[str, str]) -> dict[str, Any]:
    body = api.get("/admin/v1/models/sentiment/monitoring", headers=headers).json()
    drift: dict[str, Any] = body["versions"][0]["drift"]
    return drift


def test_training_distribution_raises_no_alert_and_a_shift_does_within_one_window(
    api: TestClient, headers: dict[str, str], receiver: Receiver
) -> None:
    # A baseline window, then four more windows of the same distribution: no alert.
    texts = [t for t, _ in reviews(WINDOW * 5, seed=11)]
    for start in range(0, len(texts), 5):
        send(api, headers, texts[start : start + 5])
        assert not report(api, headers)["drifting"], report(api, headers)
    quiet = report(api, headers)
    assert quiet["reference"]["kind"] == "baseline"
    assert quiet["analyses"] >= 12
    features = {f["feature"]: f for f in quiet["features"]}
    assert {"input_chars", "input_tokens", "tokens_per_char", "label", "confidence"} <= set(
        features
    )
    assert features["label"]["test"] == "chi2" and features["confidence"]["test"] == "ks"
    assert all(f["window_items"] == WINDOW and f["threshold"] == 0.001 for f in features.values())
    assert receiver.received == []

    # German sentences about trains: caught before one window of them has been served.
    sent = 0
    german = shifted(WINDOW, seed=12)
    while not report(api, headers)["drifting"]:
        assert sent < WINDOW, (
            f"no alert after a full window of shifted text: {report(api, headers)}"
        )
        send(api, headers, german[sent : sent + 5])
        sent += 5
    drifting = report(api, headers)
    crossed = {f["feature"] for f in drifting["features"] if f["crossed"]}
    assert {"input_chars", "tokens_per_char"} <= crossed

    metrics = api.get("/metrics", headers=headers).text
    assert 'maas_drift_alert{feature="tokens_per_char",model="sentiment",version="1"} 1.0' in (
        metrics
    )

    deadline = time.monotonic() + 10
    while not receiver.received:
        assert time.monotonic() < deadline, "the webhook got nothing"
        time.sleep(0.05)
    sent_headers, body = receiver.received[0]
    timestamp = sent_headers["X-Maas-Timestamp"]
    expected = hmac.new(SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    assert sent_headers["X-Maas-Signature"] == f"sha256={expected.hexdigest()}"
    assert abs(int(timestamp) - time.time()) < 60
    alert = json.loads(body)
    assert alert["event"] == sent_headers["X-Maas-Event"] == "drift.detected"
    assert alert["ref"] == "sentiment:1"
    assert "tokens_per_char" in alert["crossed"]

    # Back to the training distribution: the alert clears once the window has refilled.
    back = [t for t, _ in reviews(WINDOW * 2, seed=13)]
    for start in range(0, len(back), 5):
        send(api, headers, back[start : start + 5])
        if not report(api, headers)["drifting"]:
            break
    assert not report(api, headers)["drifting"]
    deadline = time.monotonic() + 10
    while len(receiver.received) < 2:
        assert time.monotonic() < deadline, "no drift.cleared alert"
        time.sleep(0.05)
    assert [e["event"] for e in receiver.events()] == ["drift.detected", "drift.cleared"]


def test_a_version_trained_on_a_dataset_is_compared_with_that_dataset(
    api: TestClient,
    headers: dict[str, str],
    registry: Registry,
    sentiment_dir: Path,
    tmp_path: Path,
) -> None:
    from maas.jobs.datasets import import_dataset

    csv = tmp_path / "reviews.csv"
    rows = reviews(200, seed=21)
    csv.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows))
    import_dataset(registry, csv, "reviews")
    registry.push(
        sentiment_dir, "sentiment", task="text-classification", params={"dataset": "reviews"}
    )
    texts = [t for t, _ in reviews(WINDOW * 2, seed=22)]
    for start in range(0, len(texts), 5):
        r = api.post(
            "/v2/models/sentiment/versions/2/infer",
            json=v2_texts(texts[start : start + 5]),
            headers=headers,
        )
        assert r.status_code == 200
        monitor: DriftMonitor = api.app.state.dataplane.monitor  # type: ignore[attr-defined]
        while monitor.busy:
            time.sleep(0.01)
    body = api.get("/admin/v1/models/sentiment/monitoring", headers=headers).json()
    drift = next(v["drift"] for v in body["versions"] if v["version"] == 2)
    assert drift["reference"]["kind"] == "dataset"
    assert drift["reference"]["source"] == "reviews:1"
    assert drift["analyses"] >= 1
    assert not drift["drifting"], drift
