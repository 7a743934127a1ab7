"""Routing policies: how requests that name a model alone are spread over its versions.

A request for ``model:3`` or ``model@canary`` (or with an ``x-maas-version``
header) names its version itself. A request for plain ``model`` normally gets
the ``production`` alias; with a routing policy it gets one of the policy's
targets instead:

* ``split``: weights over targets, each a version number (``"3"``) or an alias
  (``"@canary"``), e.g. ``{"@production": 90, "@candidate": 10}``. Which
  target a request gets is a function of its request id (or, with
  ``sticky: "key"``, of its API key), so a retried request, or every request
  of one key, lands on the same version (``serving.routing``);
* ``shadow``: a version that also receives a ``fraction`` of the requests as
  mirrors, whose answers are recorded and never returned.

Policies are registry rows: setting or clearing one bumps the ``registry``
change epoch in the same transaction, so every serving process applies it
within one poll; every change is kept in the history (who, when, what).
Targets are checked when the policy is set (a version must exist and be
ready, an alias must exist); one that goes away later is skipped while
serving (``serving.routing``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from maas.errors import ConflictError, InvalidRequestError, NotFoundError
from maas.registry.db import Database
from maas.registry.models import (
    AliasRow,
    ModelRow,
    RolloutRow,
    RoutingEventRow,
    RoutingPolicyRow,
    VersionRow,
    utcnow,
)
from maas.registry.refs import ModelRef, validate_alias
from maas.registry.rows import model_row, version_row

MAX_TARGETS = 16
STICKY_MODES = ("key",)


@dataclass(frozen=True, slots=True)
class Shadow:
    version: int
    fraction: float  # of the model's plain-name requests, 0 < fraction <= 1


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    model: str
    split: tuple[tuple[str, int], ...]  # (target, weight): "3" or "@alias"
    sticky: str | None = None  # "key": one API key, one target
    shadow: Shadow | None = None
    updated_at: datetime | None = None
    updated_by: str | None = None

    def refs(self) -> list[tuple[ModelRef, int]]:
        """Each target as a reference, with its weight."""
        return [(target_ref(self.model, target), weight) for target, weight in self.split]

    def body(self) -> dict[str, Any]:
        """The policy as ``PUT …/routing`` takes it (and as it is stored)."""
        return {
            "split": dict(self.split),
            "sticky": self.sticky,
            "shadow": (
                None
                if self.shadow is None
                else {"version": self.shadow.version, "fraction": self.shadow.fraction}
            ),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            **self.body(),
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "updated_by": self.updated_by,
        }


@dataclass(frozen=True, slots=True)
class RoutingEvent:
    model: str
    policy: dict[str, Any] | None  # None: cleared
    actor: str | None
    at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "policy": self.policy,
            "actor": self.actor,
            "at": self.at.isoformat(),
        }


def target_ref(model: str, target: str) -> ModelRef:
    if target.startswith("@"):
        return ModelRef(model, alias=target[1:])
    return ModelRef(model, version=int(target))


def parse_policy(model: str, body: Any) -> RoutingPolicy:
    """A policy from a request body, every field checked (400 naming the field)."""
    if not isinstance(body, dict):
        raise InvalidRequestError("a routing policy is a JSON object", param="split")
    unknown = sorted(set(body) - {"split", "sticky", "shadow"})
    if unknown:
        raise InvalidRequestError(
            f"unknown routing field(s) {', '.join(unknown)}: expected split, sticky, shadow",
            param=unknown[0],
        )
    split = body.get("split")
    if not isinstance(split, dict) or not split:
        raise InvalidRequestError(
            'split must be an object of targets and weights, e.g. {"1": 90, "@candidate": 10}',
            param="split",
        )
    if len(split) > MAX_TARGETS:
        raise InvalidRequestError(f"split has more than {MAX_TARGETS} targets", param="split")
    pairs: list[tuple[str, int]] = []
    for target, weight in split.items():
        pairs.append((_target(str(target)), _weight(target, weight)))
    if sum(w for _, w in pairs) <= 0:
        raise InvalidRequestError("split: at least one weight must be above 0", param="split")
    sticky = body.get("sticky")
    if sticky is not None and sticky not in STICKY_MODES:
        raise InvalidRequestError('sticky must be "key" or null', param="sticky")
    return RoutingPolicy(model, tuple(pairs), sticky, _shadow(body.get("shadow")))


def _target(target: str) -> str:
    if target.startswith("@"):
        try:
            validate_alias(target[1:])
        except InvalidRequestError as exc:
            raise InvalidRequestError(f"split: {exc.message}", param="split") from exc
        return target
    if target.isdigit() and int(target) >= 1:
        return str(int(target))
    raise InvalidRequestError(
        f"split: target {target!r} is neither a version number nor an @alias", param="split"
    )


def _weight(target: Any, weight: Any) -> int:
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 1_000_000:
        raise InvalidRequestError(
            f"split: the weight of {target!r} must be a whole number from 0 to 1000000",
            param="split",
        )
    return weight


def _shadow(raw: Any) -> Shadow | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"version", "fraction"}:
        raise InvalidRequestError(
            'shadow must be {"version": N, "fraction": F} or null', param="shadow"
        )
    version, fraction = raw.get("version"), raw.get("fraction", 1.0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidRequestError("shadow.version must be a version number", param="shadow")
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, int | float)
        or not math.isfinite(fraction)
        or not 0 < fraction <= 1
    ):
        raise InvalidRequestError("shadow.fraction must be above 0 and at most 1", param="shadow")
    return Shadow(version, float(fraction))


def set_routing(db: Database, name: str, body: Any, *, actor: str | None = None) -> RoutingPolicy:
    """Check ``body`` and make it ``name``'s routing policy (recorded in the history)."""
    policy = parse_policy(name, body)
    with db.write() as s:
        model = model_row(s, name)
        for ref, _ in policy.refs():
            _check_target(s, model.id, ref)
        if policy.shadow is not None:
            shadow = version_row(s, ModelRef(name, version=policy.shadow.version))
            if shadow.status != "ready":
                raise InvalidRequestError(
                    f"shadow: {name}:{shadow.number} has status {shadow.status!r}; "
                    "only ready versions can receive traffic",
                    param="shadow",
                )
        refuse_during_rollout(s, model)
        row = write_policy(s, model, policy.body(), actor=actor)
        assert row is not None
        return _policy(name, row)


def write_policy(
    s: Session, model: ModelRow, body: dict[str, Any] | None, *, actor: str | None
) -> RoutingPolicyRow | None:
    """Store ``body`` (already checked) as the model's policy, or clear it (None), and
    record the change, inside the caller's transaction (a rollout's step uses it)."""
    row = s.get(RoutingPolicyRow, model.id)
    now = utcnow()
    text = None if body is None else json.dumps(body, sort_keys=True)
    if text is None:
        if row is not None:
            s.delete(row)
            row = None
    elif row is None:
        row = RoutingPolicyRow(model_id=model.id, policy=text, updated_at=now, updated_by=actor)
        s.add(row)
    else:
        row.policy, row.updated_at, row.updated_by = text, now, actor
    s.add(RoutingEventRow(model_id=model.id, policy=text, actor=actor, at=now))
    s.flush()
    return row


def refuse_during_rollout(s: Session, model: ModelRow) -> None:
    """A rollout owns the model's routing while it runs: a manual change would be
    overwritten at its next step, so it is refused instead (409 naming the rollout)."""
    running = s.scalar(select(RolloutRow.id).where(RolloutRow.active_model_id == model.id))
    if running is not None:
        raise ConflictError(
            f"model {model.name!r} has rollout {running} running, which sets its routing; "
            f"cancel it first (POST /admin/v1/models/{model.name}/rollouts/{running}/cancel)",
            param="model",
        )


def _check_target(s: Any, model_id: int, ref: ModelRef) -> None:
    if ref.alias is not None:
        alias = s.scalar(
            select(AliasRow.id).where(AliasRow.model_id == model_id, AliasRow.name == ref.alias)
        )
        if alias is None:
            raise InvalidRequestError(
                f"split: model {ref.name!r} has no alias {ref.alias!r}", param="split"
            )
        return
    row = s.scalar(
        select(VersionRow).where(VersionRow.model_id == model_id, VersionRow.number == ref.version)
    )
    if row is None or row.status != "ready":
        state = "does not exist" if row is None else f"has status {row.status!r}"
        raise InvalidRequestError(
            f"split: {ref} {state}; only ready versions can receive traffic", param="split"
        )


def get_routing(db: Database, name: str) -> RoutingPolicy | None:
    with db.read() as s:
        model = model_row(s, name)
        row = s.get(RoutingPolicyRow, model.id)
        return None if row is None else _policy(name, row)


def clear_routing(db: Database, name: str, *, actor: str | None = None) -> None:
    with db.write() as s:
        model = model_row(s, name)
        if s.get(RoutingPolicyRow, model.id) is None:
            raise NotFoundError(f"model {name!r} has no routing policy", param="model")
        refuse_during_rollout(s, model)
        write_policy(s, model, None, actor=actor)


def routing_history(db: Database, name: str) -> list[RoutingEvent]:
    """Every change of the model's routing policy, oldest first."""
    with db.read() as s:
        model = model_row(s, name)
        rows = s.scalars(
            select(RoutingEventRow)
            .where(RoutingEventRow.model_id == model.id)
            .order_by(RoutingEventRow.id)
        )
        return [
            RoutingEvent(name, json.loads(r.policy) if r.policy else None, r.actor, _as_utc(r.at))
            for r in rows
        ]


def _policy(name: str, row: RoutingPolicyRow) -> RoutingPolicy:
    parsed = parse_policy(name, json.loads(row.policy))
    return RoutingPolicy(
        name,
        parsed.split,
        parsed.sticky,
        parsed.shadow,
        _as_utc(row.updated_at),
        row.updated_by,
    )


def _as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything maas stores is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
