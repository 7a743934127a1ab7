"""What a version did on live traffic during a rollout: the figures its decisions use.

* **Requests, errors, p95 latency** of one version over a window, from the usage
  records (``security.usage`` writes one per metered request).
* **Agreement** of a candidate with the answers callers got, from the comparisons
  the shadow mirror makes (``serving.shadow``) and records here, so that every
  instance's mirrors count, whichever instance judges.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from maas.registry.db import Database
from maas.registry.models import ShadowComparisonRow, UsageRow

# Caller refusals that say nothing about the version that would have answered.
_NOT_THE_MODELS_FAULT = frozenset({401, 403, 404, 413, 429})
_FIGURE_ROWS = 20_000  # newest usage rows read per version and window


@dataclass(frozen=True, slots=True)
class Figures:
    """What one version did over a window of live traffic (from the usage records)."""

    requests: int
    errors: int
    p95_seconds: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 4),
            "p95_seconds": None if self.p95_seconds is None else round(self.p95_seconds, 6),
        }


def version_figures(db: Database, model: str, version: int, since: datetime) -> Figures:
    """Requests, errors and p95 latency (queue + compute seconds) of one version since
    ``since``, from the usage records. An error is any answer with status ≥ 400 except
    refusals of the caller (401, 403, 404, 413, 429): a request both versions refuse (a
    malformed input) counts against both, and the criteria compare rates."""
    query = (
        select(UsageRow.status, UsageRow.queue_seconds + UsageRow.compute_seconds)
        .where(UsageRow.model == model, UsageRow.version == version, UsageRow.ts >= since)
        .order_by(UsageRow.ts.desc())
        .limit(_FIGURE_ROWS)
    )
    with db.read() as s:
        rows = [(int(status), float(seconds or 0.0)) for status, seconds in s.execute(query)]
    counted = [(st, sec) for st, sec in rows if st not in _NOT_THE_MODELS_FAULT]
    errors = sum(1 for st, _ in counted if st >= 400)
    latencies = sorted(sec for st, sec in counted if st < 400)
    p95 = latencies[max(0, math.ceil(0.95 * len(latencies)) - 1)] if latencies else None
    return Figures(len(counted), errors, p95)


@dataclass(frozen=True, slots=True)
class Comparison:
    """Items of one mirrored request: how many the shadow labelled as the caller's answer."""

    ts: datetime
    model: str
    version: int  # the shadow's
    baseline: int  # the version whose answer the caller got
    agreed: int
    compared: int


def write_comparisons(db: Database, comparisons: Sequence[Comparison]) -> None:
    with db.write() as s:
        s.add_all(
            ShadowComparisonRow(
                ts=c.ts,
                model=c.model,
                version=c.version,
                baseline=c.baseline,
                agreed=c.agreed,
                compared=c.compared,
            )
            for c in comparisons
        )


def agreement(
    db: Database, model: str, version: int, baseline: int, since: datetime
) -> tuple[int, int]:
    """(agreed, compared) items of ``version`` mirrored beside ``baseline`` since ``since``."""
    query = select(
        func.coalesce(func.sum(ShadowComparisonRow.agreed), 0),
        func.coalesce(func.sum(ShadowComparisonRow.compared), 0),
    ).where(
        ShadowComparisonRow.model == model,
        ShadowComparisonRow.version == version,
        ShadowComparisonRow.baseline == baseline,
        ShadowComparisonRow.ts >= since,
    )
    with db.read() as s:
        agreed, compared = s.execute(query).one()
    return int(agreed), int(compared)
