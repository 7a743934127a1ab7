"""RolloutController: watches running rollouts and advances, promotes or rolls them back.

A rollout (``registry.rollouts``) says what to try and how to judge it; the
controller is the loop that judges. Every ``interval`` seconds it reads each
running rollout and the figures of its two versions from the usage records —
the candidate over its current step, the baseline over the whole rollout, so a
step at 100 % still has a baseline to compare with — and decides:

* **roll back** at once, mid-step, when the candidate has answered at least
  ``min_requests`` and its error rate exceeds the baseline's by more than
  ``max_error_rate_increase``: a broken candidate costs a few requests, not a step;
* at once too, for a classifier with ``min_agreement``, when its top labels match the
  baseline's on fewer than that share of the mirrored items (at least ``min_requests``
  of them, counted since the rollout started): while agreement is judged the rollout
  mirrors every request the baseline answers to the candidate (``serving.shadow``);
* when the step's time is up and the candidate has ``min_requests``: roll back
  if its p95 latency is over ``max_p95_ratio`` times the baseline's (judged
  only when both have enough requests), else **advance** to the next step, or
  **promote** after the last one;
* otherwise wait: a step with too little traffic is extended, never passed
  blind (its status says why it waits).

Each decision is a compare-and-set in the registry, so when every instance runs
a controller each step happens once; the instance that made it writes the
decision, its figures and its reason to the audit log (the rollout's own
history has them too).

Figures come from usage records, which exist for requests admitted with a key:
with the trust layer off (``MAAS_AUTH=false``, a local switch) a rollout waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime

from maas.registry import rollouts as store
from maas.registry.db import Database
from maas.registry.models import utcnow
from maas.registry.rollout_figures import Figures, agreement, version_figures
from maas.registry.rollouts import Rollout
from maas.security.audit import AuditLog

log = logging.getLogger("maas.serving")

ACTOR = "rollout-controller"


@dataclass(frozen=True, slots=True)
class Verdict:
    action: str  # "wait", "advance", "promote", "rollback"
    reason: str
    figures: dict[str, object]


def judge(
    rollout: Rollout,
    candidate: Figures,
    baseline: Figures,
    now: datetime,
    agreed: tuple[int, int] = (0, 0),
) -> Verdict:
    """The decision for one rollout given its figures (see the module docstring);
    ``agreed``: (agreeing, compared) mirrored items since the rollout started."""
    c = rollout.plan.criteria
    figures: dict[str, object] = {
        "step": rollout.step,
        "percent": rollout.percent,
        "candidate": {"version": rollout.candidate, **candidate.to_json()},
        "baseline": {"version": rollout.baseline, **baseline.to_json()},
    }
    agreeing, compared = agreed
    if c.min_agreement is not None:
        figures["agreement"] = {
            "agreed": agreeing,
            "compared": compared,
            "rate": round(agreeing / compared, 4) if compared else None,
        }
        if compared >= c.min_requests and agreeing / compared < c.min_agreement:
            return Verdict(
                "rollback",
                f"agreement with the baseline {agreeing / compared:.1%} on {compared} "
                f"mirrored items is below the {c.min_agreement:.1%} required",
                figures,
            )
    enough = candidate.requests >= c.min_requests
    increase = candidate.error_rate - baseline.error_rate
    if enough and increase > c.max_error_rate_increase:
        return Verdict(
            "rollback",
            f"error rate {candidate.error_rate:.1%} of {candidate.requests} requests vs "
            f"baseline {baseline.error_rate:.1%}: +{increase:.1%} is over the "
            f"+{c.max_error_rate_increase:.1%} allowed",
            figures,
        )
    if now < rollout.step_ends_at():
        return Verdict("wait", "step in progress", figures)
    if not enough:
        return Verdict(
            "wait",
            f"waiting for traffic: {candidate.requests} of {c.min_requests} candidate "
            "requests this step",
            figures,
        )
    if c.min_agreement is not None and compared < c.min_requests:
        return Verdict(
            "wait",
            f"waiting for comparisons: {compared} of {c.min_requests} mirrored items",
            figures,
        )
    if (
        baseline.requests >= c.min_requests
        and candidate.p95_seconds is not None
        and baseline.p95_seconds
    ):
        ratio = candidate.p95_seconds / baseline.p95_seconds
        figures["p95_ratio"] = round(ratio, 3)
        if ratio > c.max_p95_ratio:
            return Verdict(
                "rollback",
                f"p95 latency {candidate.p95_seconds * 1000:.1f} ms is {ratio:.2f}x the "
                f"baseline's {baseline.p95_seconds * 1000:.1f} ms (at most "
                f"{c.max_p95_ratio:g}x allowed)",
                figures,
            )
    summary = (
        f"{candidate.requests} requests at {rollout.percent}%: error rate "
        f"{candidate.error_rate:.1%} (baseline {baseline.error_rate:.1%})"
    )
    if rollout.last_step:
        return Verdict("promote", f"every step passed; last: {summary}", figures)
    return Verdict("advance", f"step {rollout.step} passed: {summary}", figures)


class RolloutController:
    """The loop of the module docstring, for one database."""

    def __init__(self, db: Database, audit: AuditLog, *, interval: float = 1.0) -> None:
        self.db = db
        self.audit = audit
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="maas-rollouts")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.tick)
            except Exception:  # a bad tick must not end the loop; the next one retries
                log.exception("rollout controller tick failed")
            await asyncio.sleep(self.interval)

    def tick(self) -> list[Rollout]:
        """Judge every running rollout once; the rollouts this call moved."""
        moved = []
        for rollout in store.running_rollouts(self.db):
            done = self.step(rollout)
            if done is not None:
                moved.append(done)
        return moved

    def step(self, rollout: Rollout) -> Rollout | None:
        now = utcnow()
        model, started = rollout.model, rollout.created_at
        candidate = version_figures(self.db, model, rollout.candidate, rollout.step_started_at)
        baseline = version_figures(self.db, model, rollout.baseline, started)
        agreed = (0, 0)
        if rollout.plan.criteria.min_agreement is not None:
            agreed = agreement(self.db, model, rollout.candidate, rollout.baseline, started)
        verdict = judge(rollout, candidate, baseline, now, agreed)
        if verdict.action == "wait":
            return None
        figures = dict(verdict.figures)
        if verdict.action == "advance":
            moved = store.advance(self.db, rollout, figures, verdict.reason, ACTOR)
        else:
            state = "promoted" if verdict.action == "promote" else "rolled_back"
            moved = store.finish(self.db, rollout, state, figures, verdict.reason, ACTOR)
        if moved is None:
            return None  # another instance took this step
        log.info(
            "rollout %d of %s: %s (%s)", rollout.id, rollout.model, verdict.action, verdict.reason
        )
        try:
            self.audit.append(
                ACTOR,
                f"rollout.{verdict.action}",
                f"{rollout.model}/rollouts/{rollout.id}",
                details={
                    "candidate": rollout.candidate,
                    "baseline": rollout.baseline,
                    "reason": verdict.reason,
                    "figures": figures,
                },
            )
        except Exception:  # the decision stands (it is in the rollout's history)
            log.exception("writing the audit entry of rollout %d failed", rollout.id)
        return moved
