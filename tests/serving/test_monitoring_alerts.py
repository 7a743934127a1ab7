"""The drift alert webhook against a real local HTTP receiver: signed, retried, not forever."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from maas.serving.metrics import ServingMetrics
from maas.serving.monitoring_alerts import AlertWebhook


class Receiver:
    """Answers each POST with the next status of ``statuses`` (the last one repeats)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append((dict(self.headers.items()), body))
                index = min(len(outer.received), len(outer.statuses)) - 1
                self.send_response(outer.statuses[index])
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    r = Receiver(request.param)
    yield r
    r.server.shutdown()
    r.server.server_close()


async def deliver(receiver: Receiver, posts: int, secret: str | None = "s3cret") -> AlertWebhook:
    hook = AlertWebhook(receiver.url, secret, ServingMetrics(), attempts=3, first_backoff=0.01)
    hook.send({"event": "drift.detected", "model": "m", "version": 1})
    for _ in range(500):
        if len(receiver.received) >= posts:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # room for a retry that should not come
    await hook.close()
    return hook


@pytest.mark.parametrize("receiver", [[503, 204]], indirect=True)
def test_a_failed_delivery_is_retried_with_the_same_id_and_a_valid_signature(
    receiver: Receiver,
) -> None:
    hook = asyncio.run(deliver(receiver, 2))
    assert len(receiver.received) == 2
    (first, _), (second, body) = receiver.received
    assert first["X-Maas-Delivery"] == second["X-Maas-Delivery"]
    signed = second["X-Maas-Timestamp"].encode() + b"." + body
    expected = hmac.new(b"s3cret", signed, hashlib.sha256).hexdigest()
    assert second["X-Maas-Signature"] == f"sha256={expected}"
    assert hook.deliveries.labels("delivered")._value.get() == 1


@pytest.mark.parametrize("receiver", [[400]], indirect=True)
def test_a_refused_alert_is_not_retried(receiver: Receiver) -> None:
    hook = asyncio.run(deliver(receiver, 1))
    assert len(receiver.received) == 1
    assert hook.deliveries.labels("refused")._value.get() == 1


@pytest.mark.parametrize("receiver", [[500]], indirect=True)
def test_delivery_gives_up_after_its_attempts(receiver: Receiver) -> None:
    hook = asyncio.run(deliver(receiver, 3))
    assert len(receiver.received) == 3
    assert hook.deliveries.labels("failed")._value.get() == 1


@pytest.mark.parametrize("receiver", [[204]], indirect=True)
def test_without_a_secret_alerts_go_unsigned(receiver: Receiver) -> None:
    asyncio.run(deliver(receiver, 1, secret=None))
    assert "X-Maas-Signature" not in receiver.received[0][0]
