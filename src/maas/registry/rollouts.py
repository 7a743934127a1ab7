"""Rollouts: a candidate version tried on a growing share of live traffic, step by step.

A rollout names a **candidate** and a **plan**: the percentages of the model's
plain-name traffic it gets at each step (``[5, 25, 100]``), how long each step
lasts, and the **criteria** the candidate must meet against the **baseline**
(the version ``production`` pointed at when the rollout started). While it
runs, the rollout owns the model's routing policy: each step rewrites the split
(``{baseline: 95, candidate: 5}``), and a manual routing change is refused.

Its end is one of:

* ``promoted``: every step passed; ``production`` moves to the candidate;
* ``rolled_back``: a step failed its criteria; traffic goes back to the baseline;
* ``cancelled``: an operator stopped it; traffic goes back to the baseline.

Either way the routing policy the model had before the rollout comes back.

This module is the rollout's record and its transitions; the decisions are made
by ``serving.rollouts.RolloutController`` from the figures read here. Every
transition is a compare-and-set on ``(state, step)`` in the transaction that
also rewrites the routing (and moves the alias), so when several instances run
a controller, each step is taken exactly once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from maas.errors import ConflictError, InvalidRequestError, NotFoundError
from maas.registry.aliases import move_alias
from maas.registry.db import Database
from maas.registry.models import (
    ModelRow,
    RolloutEventRow,
    RolloutRow,
    RoutingPolicyRow,
    utcnow,
)
from maas.registry.refs import DEFAULT_ALIAS, ModelRef
from maas.registry.rollout_plan import Criteria, Plan, parse_plan
from maas.registry.routing import write_policy
from maas.registry.rows import model_row, version_row

RUNNING = "running"
ENDED = ("promoted", "rolled_back", "cancelled")


@dataclass(frozen=True, slots=True)
class RolloutEvent:
    at: datetime
    action: str
    step: int
    percent: int
    figures: dict[str, Any] | None
    reason: str
    actor: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "action": self.action,
            "step": self.step,
            "percent": self.percent,
            "figures": self.figures,
            "reason": self.reason,
            "actor": self.actor,
        }


@dataclass(frozen=True, slots=True)
class Rollout:
    id: int
    model: str
    candidate: int
    baseline: int
    plan: Plan
    state: str
    step: int
    step_started_at: datetime
    created_at: datetime
    created_by: str | None
    origin: str | None
    finished_at: datetime | None
    reason: str | None
    events: tuple[RolloutEvent, ...] = ()

    @property
    def percent(self) -> int:
        return self.plan.steps[min(self.step, len(self.plan.steps) - 1)]

    @property
    def last_step(self) -> bool:
        return self.step >= len(self.plan.steps) - 1

    def step_ends_at(self) -> datetime:
        return self.step_started_at + timedelta(seconds=self.plan.step_seconds)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "candidate": self.candidate,
            "baseline": self.baseline,
            **self.plan.to_json(),
            "state": self.state,
            "step": self.step,
            "percent": self.percent,
            "step_started_at": self.step_started_at.isoformat(),
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "origin": self.origin,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "reason": self.reason,
            "events": [e.to_json() for e in self.events],
        }


# ------------------------------------------------------------------ parsing


def _candidate(s: Session, name: str, raw: Any) -> int:
    if isinstance(raw, str) and raw.startswith("@"):
        ref = ModelRef(name, alias=raw[1:])
    elif (isinstance(raw, str) and raw.isdigit()) or type(raw) is int:
        ref = ModelRef(name, version=int(raw))
    else:
        raise InvalidRequestError(
            'candidate must be a version number or an "@alias" of the model', param="candidate"
        )
    try:
        row = version_row(s, ref)
    except NotFoundError as exc:
        raise InvalidRequestError(exc.message, param="candidate") from exc
    if row.status != "ready":
        raise InvalidRequestError(
            f"{name}:{row.number} has status {row.status!r}; only ready versions can take traffic",
            param="candidate",
        )
    return row.number


# ------------------------------------------------------------- operations


def start_rollout(
    db: Database,
    name: str,
    body: Any,
    *,
    actor: str | None = None,
    origin: str | None = None,
) -> Rollout:
    """Start a rollout of ``body["candidate"]`` against the version ``production`` holds."""
    if not isinstance(body, dict):
        raise InvalidRequestError("a rollout is a JSON object", param="candidate")
    unknown = sorted(set(body) - {"candidate", "steps", "step_seconds", "criteria"})
    if unknown:
        raise InvalidRequestError(
            f"unknown rollout field(s) {', '.join(unknown)}: expected candidate, steps, "
            "step_seconds, criteria",
            param=unknown[0],
        )
    plan = parse_plan(body)
    with db.write() as s:
        model = model_row(s, name)
        candidate = _candidate(s, name, body.get("candidate"))
        try:
            baseline = version_row(s, ModelRef(name, alias=DEFAULT_ALIAS)).number
        except NotFoundError as exc:
            raise ConflictError(
                f"model {name!r} has no {DEFAULT_ALIAS!r} alias: a rollout compares its "
                "candidate with the production version",
                param="model",
            ) from exc
        if candidate == baseline:
            raise InvalidRequestError(
                f"{name}:{candidate} is already {DEFAULT_ALIAS}", param="candidate"
            )
        running = s.scalar(select(RolloutRow.id).where(RolloutRow.active_model_id == model.id))
        if running is not None:
            raise ConflictError(
                f"model {name!r} already has rollout {running} running", param="model"
            )
        prior = s.get(RoutingPolicyRow, model.id)
        now = utcnow()
        row = RolloutRow(
            model_id=model.id,
            active_model_id=model.id,
            candidate=candidate,
            baseline=baseline,
            plan=json.dumps(plan.to_json()),
            state=RUNNING,
            step=0,
            step_started_at=now,
            prior_policy=None if prior is None else prior.policy,
            origin=origin,
            created_at=now,
            created_by=actor,
        )
        s.add(row)
        s.flush()
        rollout = _rollout(s, row, name)
        write_policy(s, model, _split(rollout, 0, row.prior_policy), actor=_who(row.id))
        _event(s, row, "start", 0, plan.steps[0], None, "started", actor)
        return _rollout(s, row, name, with_events=True)


def advance(
    db: Database, rollout: Rollout, figures: dict[str, Any], reason: str, actor: str | None
) -> Rollout | None:
    """Take the next step; None when another instance already moved this rollout."""
    nxt = rollout.step + 1
    with db.write() as s:
        row = _claim(s, rollout, step=nxt, step_started_at=utcnow())
        if row is None:
            return None
        model = s.get_one(ModelRow, row.model_id)
        write_policy(s, model, _split(rollout, nxt, row.prior_policy), actor=_who(row.id))
        _event(s, row, "advance", nxt, rollout.plan.steps[nxt], figures, reason, actor)
        return _rollout(s, row, model.name, with_events=True)


def finish(
    db: Database,
    rollout: Rollout,
    state: str,
    figures: dict[str, Any] | None,
    reason: str,
    actor: str | None,
) -> Rollout | None:
    """End the rollout as ``promoted``, ``rolled_back`` or ``cancelled`` (see the module
    docstring); None when another instance already moved it."""
    if state not in ENDED:
        raise ValueError(state)
    with db.write() as s:
        row = _claim(
            s,
            rollout,
            state=state,
            active_model_id=None,
            finished_at=utcnow(),
            reason=reason,
        )
        if row is None:
            return None
        model = s.get_one(ModelRow, row.model_id)
        if state == "promoted":
            target = version_row(s, ModelRef(model.name, version=rollout.candidate))
            move_alias(
                s,
                model,
                DEFAULT_ALIAS,
                target,
                actor=_who(row.id),
                reason=f"rollout {row.id} promoted {model.name}:{rollout.candidate}",
            )
        prior = None if row.prior_policy is None else json.loads(row.prior_policy)
        write_policy(s, model, prior, actor=_who(row.id))
        action = {"promoted": "promote", "rolled_back": "rollback", "cancelled": "cancel"}[state]
        _event(s, row, action, rollout.step, rollout.percent, figures, reason, actor)
        return _rollout(s, row, model.name, with_events=True)


def cancel_rollout(db: Database, name: str, rollout_id: int, *, actor: str | None) -> Rollout:
    """An operator's stop: traffic goes back to the baseline (409 once it has ended)."""
    rollout = get_rollout(db, name, rollout_id)
    if rollout.state != RUNNING:
        raise ConflictError(f"rollout {rollout_id} already ended: {rollout.state}")
    ended = finish(db, rollout, "cancelled", None, "cancelled by an operator", actor)
    if ended is None:  # the controller moved it meanwhile: report what it is now
        return cancel_rollout(db, name, rollout_id, actor=actor)
    return ended


def get_rollout(db: Database, name: str, rollout_id: int) -> Rollout:
    with db.read() as s:
        model = model_row(s, name)
        row = s.get(RolloutRow, rollout_id)
        if row is None or row.model_id != model.id:
            raise NotFoundError(f"model {name!r} has no rollout {rollout_id}", param="rollout")
        return _rollout(s, row, name, with_events=True)


def list_rollouts(db: Database, name: str) -> list[Rollout]:
    """The model's rollouts, newest first (without their events)."""
    with db.read() as s:
        model = model_row(s, name)
        rows = s.scalars(
            select(RolloutRow).where(RolloutRow.model_id == model.id).order_by(RolloutRow.id.desc())
        )
        return [_rollout(s, r, name) for r in rows]


def running_rollouts(db: Database) -> list[Rollout]:
    """Every running rollout, of every model (what a controller looks after)."""
    with db.read() as s:
        rows = s.execute(
            select(RolloutRow, ModelRow.name)
            .join(ModelRow, ModelRow.id == RolloutRow.model_id)
            .where(RolloutRow.state == RUNNING)
        )
        return [_rollout(s, row, name) for row, name in rows]


# ---------------------------------------------------------------- helpers


def _who(rollout_id: int) -> str:
    return f"rollout:{rollout_id}"


def _split(rollout: Rollout, step: int, prior_policy: str | None) -> dict[str, Any]:
    percent = rollout.plan.steps[step]
    split = {str(rollout.candidate): percent}
    if percent < 100:
        split[str(rollout.baseline)] = 100 - percent
    prior = json.loads(prior_policy) if prior_policy else {}
    # A sticky mode and a shadow the model had stay in force during the rollout, unless
    # agreement is judged: then every request the baseline answers is also mirrored to the
    # candidate (the mirror runs one at a time and drops what it cannot keep up with).
    shadow = prior.get("shadow")
    if rollout.plan.criteria.min_agreement is not None:
        shadow = {"version": rollout.candidate, "fraction": 1.0}
    return {"split": split, "sticky": prior.get("sticky"), "shadow": shadow}


def _claim(s: Session, rollout: Rollout, **values: Any) -> RolloutRow | None:
    """Compare-and-set: change the row only if it is still running at ``rollout.step``."""
    result = s.execute(
        update(RolloutRow)
        .where(
            RolloutRow.id == rollout.id,
            RolloutRow.state == RUNNING,
            RolloutRow.step == rollout.step,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        return None
    row = s.get_one(RolloutRow, rollout.id)
    s.refresh(row)
    return row


def _event(
    s: Session,
    row: RolloutRow,
    action: str,
    step: int,
    percent: int,
    figures: dict[str, Any] | None,
    reason: str,
    actor: str | None,
) -> None:
    s.add(
        RolloutEventRow(
            rollout_id=row.id,
            at=utcnow(),
            action=action,
            step=step,
            percent=percent,
            figures=None if figures is None else json.dumps(figures, sort_keys=True),
            reason=reason,
            actor=actor,
        )
    )
    s.flush()


def _rollout(s: Session, row: RolloutRow, name: str, *, with_events: bool = False) -> Rollout:
    raw = json.loads(row.plan)
    plan = Plan(
        tuple(raw["steps"]), float(raw["step_seconds"]), Criteria(**raw.get("criteria", {}))
    )
    events: tuple[RolloutEvent, ...] = ()
    if with_events:
        events = tuple(
            RolloutEvent(
                _utc(e.at),
                e.action,
                e.step,
                e.percent,
                json.loads(e.figures) if e.figures else None,
                e.reason,
                e.actor,
            )
            for e in s.scalars(
                select(RolloutEventRow)
                .where(RolloutEventRow.rollout_id == row.id)
                .order_by(RolloutEventRow.id)
            )
        )
    return Rollout(
        id=row.id,
        model=name,
        candidate=row.candidate,
        baseline=row.baseline,
        plan=plan,
        state=row.state,
        step=row.step,
        step_started_at=_utc(row.step_started_at),
        created_at=_utc(row.created_at),
        created_by=row.created_by,
        origin=row.origin,
        finished_at=_utc(row.finished_at) if row.finished_at else None,
        reason=row.reason,
        events=events,
    )


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything maas stores is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
