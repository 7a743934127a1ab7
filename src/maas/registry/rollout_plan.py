"""A rollout's plan: its steps, how long each lasts, and the criteria each must meet.

Parsed from the ``POST …/rollouts`` body (or a pipeline's ``rollout``) with every field
checked, so a mistake is a 400 naming the field before anything changes.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from maas.errors import InvalidRequestError

MAX_STEPS = 10


@dataclass(frozen=True, slots=True)
class Criteria:
    """What the candidate must meet, step by step, against the baseline."""

    # candidate error rate - baseline error rate, as a fraction of requests
    max_error_rate_increase: float = 0.01
    # candidate p95 latency (queue + compute) / baseline p95
    max_p95_ratio: float = 1.5
    # candidate requests needed before a step can pass (or fail on errors)
    min_requests: int = 20
    # classifiers: share of mirrored requests where the candidate's top label equals the
    # baseline's (None: not judged)
    min_agreement: float | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    steps: tuple[int, ...] = (5, 25, 100)  # percent of plain-name traffic per step
    step_seconds: float = 300.0
    criteria: Criteria = field(default_factory=Criteria)

    def to_json(self) -> dict[str, Any]:
        return {
            "steps": list(self.steps),
            "step_seconds": self.step_seconds,
            "criteria": asdict(self.criteria),
        }


def parse_plan(body: dict[str, Any]) -> Plan:
    """The plan part of a ``POST …/rollouts`` body, every field checked (400 naming it)."""
    defaults = Plan()
    steps = body.get("steps", list(defaults.steps))
    if (
        not isinstance(steps, list)
        or not 1 <= len(steps) <= MAX_STEPS
        or any(isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 100 for p in steps)
        or any(b <= a for a, b in itertools.pairwise(steps))
    ):
        raise InvalidRequestError(
            f"steps must be 1 to {MAX_STEPS} rising whole percentages from 1 to 100, "
            "e.g. [5, 25, 100]",
            param="steps",
        )
    seconds = _number(body.get("step_seconds", defaults.step_seconds), param="step_seconds")
    if not 0 < seconds <= 7 * 86400:
        raise InvalidRequestError(
            "step_seconds must be above 0 and at most 7 days", param="step_seconds"
        )
    raw = body.get("criteria") or {}
    if not isinstance(raw, dict):
        raise InvalidRequestError("criteria must be a JSON object", param="criteria")
    known = {"max_error_rate_increase", "max_p95_ratio", "min_requests", "min_agreement"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InvalidRequestError(
            f"unknown criteria {', '.join(unknown)}: expected {', '.join(sorted(known))}",
            param="criteria",
        )
    base = defaults.criteria
    rate = _number(
        raw.get("max_error_rate_increase", base.max_error_rate_increase), param="criteria"
    )
    ratio = _number(raw.get("max_p95_ratio", base.max_p95_ratio), param="criteria")
    minimum = raw.get("min_requests", base.min_requests)
    if not 0 <= rate <= 1:
        raise InvalidRequestError(
            "criteria.max_error_rate_increase must be 0 to 1", param="criteria"
        )
    if ratio < 1:
        raise InvalidRequestError("criteria.max_p95_ratio must be at least 1", param="criteria")
    if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 1:
        raise InvalidRequestError(
            "criteria.min_requests must be a whole number ≥ 1", param="criteria"
        )
    agreement = raw.get("min_agreement")
    if agreement is not None:
        agreement = _number(agreement, param="criteria")
        if not 0 < agreement <= 1:
            raise InvalidRequestError(
                "criteria.min_agreement must be above 0 and at most 1", param="criteria"
            )
        if steps[0] == 100:
            raise InvalidRequestError(
                "criteria.min_agreement compares the candidate with the baseline on the same "
                "requests: the first step must leave the baseline some traffic (below 100)",
                param="criteria",
            )
    return Plan(tuple(steps), seconds, Criteria(rate, ratio, minimum, agreement))


def _number(value: Any, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequestError(f"{param} must be a number", param=param)
    return float(value)
