"""AlertWebhook: drift alerts POSTed to an operator's URL, signed, retried, in the background.

``send`` only queues (never on the request path, never blocking the monitor);
one background task delivers in order. Each alert is a JSON body with
headers:

* ``X-Maas-Event``: ``drift.detected`` or ``drift.cleared``;
* ``X-Maas-Delivery``: an id, the same on every retry (receivers de-duplicate);
* ``X-Maas-Timestamp``: Unix seconds when it was signed;
* ``X-Maas-Signature``: ``sha256=<hex>``, HMAC-SHA256 with
  ``MAAS_ALERT_WEBHOOK_SECRET`` over ``<timestamp>.<body>``. Signing the
  timestamp lets a receiver refuse replays of an old alert (check it is recent),
  the same scheme as Stripe's and Slack's webhooks.

Delivery: a 2xx ends it; a connection error, a timeout, 408, 429 or a 5xx is
retried with exponential back-off (0.5 s, 1 s, 2 s, ... up to 30 s) for
``MAAS_ALERT_WEBHOOK_ATTEMPTS`` tries; any other status is final (the receiver
refused it; retrying would not help). At most ``MAX_QUEUED`` alerts wait; past
it the oldest is dropped and counted, so an unreachable receiver cannot grow
memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from typing import Any

import httpx
from prometheus_client import Counter

from maas.serving.metrics import ServingMetrics

log = logging.getLogger(__name__)

MAX_QUEUED = 100
RETRY_STATUSES = frozenset({408, 429})


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Maas-Signature`` value for a body sent at ``timestamp``."""
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class AlertWebhook:
    def __init__(
        self,
        url: str,
        secret: str | None,
        metrics: ServingMetrics,
        *,
        attempts: int = 6,
        first_backoff: float = 0.5,
        timeout: float = 10.0,
    ) -> None:
        self.url = url
        self._secret = secret.encode() if secret else None
        self.attempts = attempts
        self.first_backoff = first_backoff
        self._timeout = timeout
        self._queue: asyncio.Queue[tuple[str, bytes, str]] | None = None
        self._task: asyncio.Task[None] | None = None
        self.deliveries = Counter(
            "maas_alert_deliveries",
            "Drift alert webhook deliveries by outcome (delivered, refused, failed, dropped)",
            ["outcome"],
            registry=metrics.registry,
        )
        if self._secret is None:
            log.warning(
                "MAAS_ALERT_WEBHOOK_URL is set without MAAS_ALERT_WEBHOOK_SECRET: "
                "alerts are sent unsigned"
            )

    def send(self, payload: dict[str, Any]) -> None:
        """Queue one alert; returns at once."""
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="alert webhook")
        if self._queue.qsize() >= MAX_QUEUED:
            self._queue.get_nowait()
            self.deliveries.labels("dropped").inc()
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        self._queue.put_nowait((str(payload.get("event", "alert")), body, secrets.token_hex(8)))

    async def _run(self) -> None:
        assert self._queue is not None
        async with httpx.AsyncClient(timeout=self._timeout) as client:
            while True:
                event, body, delivery = await self._queue.get()
                outcome = await self._deliver(client, event, body, delivery)
                self.deliveries.labels(outcome).inc()

    async def _deliver(
        self, client: httpx.AsyncClient, event: str, body: bytes, delivery: str
    ) -> str:
        backoff = self.first_backoff
        for attempt in range(1, self.attempts + 1):
            timestamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "X-Maas-Event": event,
                "X-Maas-Delivery": delivery,
                "X-Maas-Timestamp": timestamp,
            }
            if self._secret is not None:
                headers["X-Maas-Signature"] = sign(self._secret, timestamp, body)
            try:
                response = await client.post(self.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                reason = f"{type(exc).__name__}: {exc}"
            else:
                if response.is_success:
                    return "delivered"
                if response.status_code < 500 and response.status_code not in RETRY_STATUSES:
                    log.warning("alert webhook refused %s: HTTP %d", event, response.status_code)
                    return "refused"
                reason = f"HTTP {response.status_code}"
            if attempt < self.attempts:
                log.info("alert webhook attempt %d failed (%s); retrying", attempt, reason)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
            else:
                log.warning(
                    "alert webhook gave up on %s after %d tries: %s", event, attempt, reason
                )
        return "failed"

    async def close(self) -> None:
        """Stop delivering (alerts still queued are dropped: the gauges still show them)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
