"""Prediction ids, and the predictions recorded so that feedback can be attached to them.

Every inference answer carries a prediction id (``new_prediction_id``): the
data plane makes one per request. Ids start with what answered (``chatcmpl``,
``cmpl``, ``emb``, ``pred``), then 8 hex digits of the Unix time and 16 random
ones: 24 hex digits, the shape of OpenAI's own ``chatcmpl-`` ids, so the chat
routes use it as their ``id``. The time lets the feedback route tell a fresh
prediction (maybe not written yet) from an unknown one.

``PredictionRecorder`` records the predictions worth feedback — classifiers
(their label and its probability) and generations (no label: feedback is a
score, or a label a caller compares itself) — one row per item, in batches off
the request path, exactly like usage records: ``record_*`` appends, a
background task writes. Embeddings and tensor models are not recorded: an
embedding has no answer a caller can judge, and tensor models run at rates
where a row a request would double the database's write load; their ids still
name the answer in logs and headers.

Inputs are stored only when capture is on — ``MAAS_FEEDBACK_CAPTURE_INPUTS``,
or the model tagged ``feedback_capture=true`` by its owner — and then always
through PII redaction (``security.pii``; the strictest of the caller's policy,
the model's ``pii_policy`` tag and ``redact``), applied by the writer thread,
not the request. A text a ``block`` policy refuses is not stored.
"""

from __future__ import annotations

import logging
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Gauge

from maas.registry.batch_writer import BatchWriter
from maas.registry.db import Database
from maas.registry.feedback import FeedbackStats, PredictionRecord, write_predictions
from maas.registry.schemas import VersionInfo
from maas.security.pii import PiiBlockedError, PiiPolicy, apply_input, strictest
from maas.serving.metrics import ServingMetrics

log = logging.getLogger(__name__)

ID_PREFIXES = {"chat": "chatcmpl", "completions": "cmpl", "embeddings": "emb"}
RECORDED_TASKS = frozenset({"text-classification", "image-classification", "text-generation"})
_REDACT = PiiPolicy(mode="redact", scope="input")


def new_prediction_id(route: str) -> str:
    prefix = ID_PREFIXES.get(route, "pred")
    return f"{prefix}-{int(time.time()) & 0xFFFFFFFF:08x}{secrets.token_hex(8)}"


def prediction_age(prediction_id: str) -> float | None:
    """Seconds since the id was made, or None when it is not one of ours."""
    _, sep, rest = prediction_id.rpartition("-")
    if not sep or len(rest) != 24:
        return None
    try:
        made = int(rest[:8], 16)
        int(rest[8:], 16)
    except ValueError:
        return None
    return (int(time.time()) & 0xFFFFFFFF) - made


def captures(version: VersionInfo, capture_all: bool) -> bool:
    tagged = version.tags.get("feedback_capture")
    return capture_all or tagged is True or str(tagged).lower() in ("true", "1", "yes", "on")


class PredictionRecorder:
    def __init__(
        self,
        db: Database,
        metrics: ServingMetrics,
        *,
        capture_inputs: bool = False,
        flush_seconds: float = 0.5,
    ) -> None:
        self.db = db
        self.capture_inputs = capture_inputs
        self.flush_seconds = flush_seconds
        # Records, and the PII policy to apply to a record's captured text (None: no text),
        # written in batches off the request path.
        self._writer: BatchWriter[tuple[PredictionRecord, PiiPolicy | None]] = BatchWriter(
            self._write, name="prediction writer", flush_seconds=flush_seconds
        )
        # Set from the database whenever this process takes feedback (the monitoring
        # route reads the database itself, so it sees every worker's and instance's).
        labels = ["model", "version"]
        self.accuracy = Gauge(
            "maas_live_accuracy",
            "Share of the newest labelled predictions (MAAS_FEEDBACK_WINDOW) whose label "
            "the caller confirmed",
            labels,
            registry=metrics.registry,
        )
        self.labelled = Gauge(
            "maas_feedback_labelled",
            "Labelled predictions the live accuracy counts",
            labels,
            registry=metrics.registry,
        )
        self.mean_score = Gauge(
            "maas_feedback_score_mean",
            "Mean feedback score over the newest scored predictions",
            labels,
            registry=metrics.registry,
        )

    def publish(self, stats: FeedbackStats) -> None:
        labels = (stats.model, str(stats.version))
        self.labelled.labels(*labels).set(stats.labelled)
        if stats.accuracy is not None:
            self.accuracy.labels(*labels).set(stats.accuracy)
        if stats.mean_score is not None:
            self.mean_score.labels(*labels).set(stats.mean_score)

    # -------------------------------------------------------------- hot path

    def record_classifications(
        self,
        prediction_id: str,
        version: VersionInfo,
        items: list[Any],
        results: list[Any],
        *,
        key_id: int | None,
        pii: PiiPolicy | None,
    ) -> None:
        """One row per classified item: its top label and that label's probability."""
        policy = self._capture_policy(version, pii)
        now = datetime.now(UTC)
        records: list[tuple[PredictionRecord, PiiPolicy | None]] = []
        for index, (item, result) in enumerate(zip(items, results, strict=False)):
            top = result.labels[0] if getattr(result, "labels", None) else (None, None)
            record = PredictionRecord(
                prediction_id,
                index,
                version.model,
                version.version,
                version.task,
                now,
                key_id,
                None if top[0] is None else str(top[0]),
                None if top[1] is None else float(top[1]),
                item if policy is not None and isinstance(item, str) else None,
            )
            records.append((record, policy))
        self._writer.add(*records)

    def record_generation(
        self,
        prediction_id: str,
        version: VersionInfo,
        prompt: str,
        choices: int,
        *,
        key_id: int | None,
        pii: PiiPolicy | None,
    ) -> None:
        """One row per choice of a generation (no output label: it is free text)."""
        policy = self._capture_policy(version, pii)
        now = datetime.now(UTC)
        records: list[tuple[PredictionRecord, PiiPolicy | None]] = []
        for index in range(choices):
            record = PredictionRecord(
                prediction_id,
                index,
                version.model,
                version.version,
                version.task,
                now,
                key_id,
                input_text=prompt if policy is not None else None,
            )
            records.append((record, policy))
        self._writer.add(*records)

    def _capture_policy(self, version: VersionInfo, pii: PiiPolicy | None) -> PiiPolicy | None:
        if not captures(version, self.capture_inputs):
            return None
        tagged = version.tags.get("pii_policy")
        return strictest(pii, PiiPolicy.parse(str(tagged)) if tagged else None, _REDACT)

    def pending(self, prediction_id: str) -> bool:
        """True while a prediction of this id waits to be written by this process."""
        return any(record.prediction_id == prediction_id for record, _ in self._writer.pending)

    # -------------------------------------------------------------- writing

    async def flush(self) -> int:
        return await self._writer.flush()

    def _write(self, batch: list[tuple[PredictionRecord, PiiPolicy | None]]) -> None:
        records = []
        for record, policy in batch:
            if record.input_text is not None and policy is not None:
                try:
                    record.input_text = apply_input(policy, record.input_text)
                except PiiBlockedError:
                    record.input_text = None
            records.append(record)
        write_predictions(self.db, records)

    async def close(self) -> None:
        await self._writer.close()
