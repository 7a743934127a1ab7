"""Deployments: how each version is served, recorded once for every instance.

A version without a row is served on demand: loaded by its first request,
evicted when the memory budget needs the room, one replica. A row records what
an operator asked for:

* ``loaded``: True = load it on every instance (and on every instance that
  starts later), False = unload it everywhere now, None = on demand;
* ``pinned``: never evicted by the memory budget;
* Ray Serve mode only: ``replicas`` (a fixed count), or autoscaling between
  ``min_replicas`` and ``max_replicas`` around ``target_ongoing_requests``,
  and ``num_cpus`` per replica.

Rows are registry rows: writing one bumps the ``registry`` change epoch in the
same transaction (``registry/epochs.py``), so every serving process sees the
change within one poll and reconciles (``serving/reconcile.py``). Deleting the
version deletes its row (ON DELETE CASCADE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from maas.errors import InvalidRequestError
from maas.registry.db import Database
from maas.registry.models import DeploymentRow, ModelRow, VersionRow, utcnow
from maas.registry.refs import ModelRef
from maas.registry.rows import version_row


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    model: str
    version: int
    # desired: True = loaded on every instance, False = unloaded everywhere, None = on demand
    loaded: bool | None = None
    pinned: bool = False  # never evicted by the memory budget
    replicas: int | None = None  # fixed replica count (Ray mode); None = 1
    min_replicas: int | None = None  # autoscaling (Ray mode) when both are set
    max_replicas: int | None = None
    target_ongoing_requests: float | None = None
    num_cpus: float | None = None  # CPUs per replica (Ray mode)
    updated_at: datetime | None = None
    updated_by: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.version}"

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None and self.max_replicas is not None

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["updated_at"] = self.updated_at.isoformat() if self.updated_at else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeploymentSpec:
        """The inverse of ``to_json`` (the SDK reads the API's answers with it)."""
        stamp = data.get("updated_at")
        return cls(
            model=str(data["model"]),
            version=int(data["version"]),
            pinned=bool(data.get("pinned")),
            updated_at=_as_utc(datetime.fromisoformat(stamp)) if stamp else None,
            updated_by=data.get("updated_by"),
            **{name: data.get(name) for name in SETTINGS if name != "pinned"},
        )


def _as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything maas stores is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# The settings a caller may change, and the kind of value each takes.
_BOOLS = ("loaded", "pinned")
_COUNTS = ("replicas", "min_replicas", "max_replicas")
_POSITIVE = ("target_ongoing_requests", "num_cpus")
SETTINGS = (*_BOOLS, *_COUNTS, *_POSITIVE)


def _checked(name: str, value: Any) -> Any:
    """``value`` as the setting ``name`` stores it, or InvalidRequestError naming it."""
    if name not in SETTINGS:
        raise InvalidRequestError(
            f"unknown deployment setting {name!r}; expected one of {', '.join(SETTINGS)}",
            param=name,
        )
    if value is None:
        if name == "pinned":
            raise InvalidRequestError("pinned must be true or false", param=name)
        return None
    if name in _BOOLS:
        if not isinstance(value, bool):
            raise InvalidRequestError(f"{name} must be true, false or null", param=name)
        return value
    if name in _COUNTS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidRequestError(f"{name} must be an integer of at least 1", param=name)
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequestError(f"{name} must be a number", param=name)
    if not math.isfinite(value) or value <= 0:
        raise InvalidRequestError(f"{name} must be a number above 0", param=name)
    return float(value)


def _check_consistent(spec: DeploymentSpec) -> None:
    if spec.loaded is False and spec.pinned:
        raise InvalidRequestError(
            "a version that is unloaded everywhere cannot be pinned", param="pinned"
        )
    if (spec.min_replicas is None) != (spec.max_replicas is None):
        missing = "max_replicas" if spec.max_replicas is None else "min_replicas"
        raise InvalidRequestError(
            "autoscaling needs both min_replicas and max_replicas", param=missing
        )
    if spec.autoscaling:
        assert spec.min_replicas is not None and spec.max_replicas is not None
        if spec.min_replicas > spec.max_replicas:
            raise InvalidRequestError(
                f"min_replicas ({spec.min_replicas}) is above max_replicas ({spec.max_replicas})",
                param="min_replicas",
            )
        if spec.replicas is not None:
            raise InvalidRequestError(
                "set either replicas (a fixed count) or min_replicas/max_replicas "
                "(autoscaling), not both",
                param="replicas",
            )
    elif spec.target_ongoing_requests is not None:
        raise InvalidRequestError(
            "target_ongoing_requests applies to autoscaling: set min_replicas and max_replicas too",
            param="target_ongoing_requests",
        )


def _spec(model: str, version: int, row: DeploymentRow | None) -> DeploymentSpec:
    if row is None:
        return DeploymentSpec(model=model, version=version)
    return DeploymentSpec(
        model=model,
        version=version,
        loaded=row.loaded,
        pinned=row.pinned,
        replicas=row.replicas,
        min_replicas=row.min_replicas,
        max_replicas=row.max_replicas,
        target_ongoing_requests=row.target_ongoing_requests,
        num_cpus=row.num_cpus,
        updated_at=_as_utc(row.updated_at),
        updated_by=row.updated_by,
    )


def get_deployment(db: Database, model: str, version: int) -> DeploymentSpec:
    """The version's settings; the defaults when it has no row. NotFoundError: no version."""
    with db.read() as s:
        row = version_row(s, ModelRef(model, version=version))
        return _spec(model, version, s.get(DeploymentRow, row.id))


def set_deployment(
    db: Database, model: str, version: int, *, actor: str | None, **changes: Any
) -> DeploymentSpec:
    """Change some settings of a version (the others keep their values); the result."""
    checked = {name: _checked(name, value) for name, value in changes.items()}
    with db.write() as s:
        target = version_row(s, ModelRef(model, version=version))
        row = s.get(DeploymentRow, target.id)
        merged = {**_settings_of(_spec(model, version, row)), **checked}
        _check_consistent(DeploymentSpec(model=model, version=version, **merged))
        if row is None:
            row = DeploymentRow(version_id=target.id)
            s.add(row)
        for name, value in merged.items():
            setattr(row, name, value)
        row.updated_at = utcnow()
        row.updated_by = actor
        s.flush()
        return _spec(model, version, row)


def _settings_of(spec: DeploymentSpec) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in SETTINGS}


def list_deployments(db: Database) -> list[DeploymentSpec]:
    """Every version that has a row, by model name and version number."""
    query = (
        select(DeploymentRow, ModelRow.name, VersionRow.number)
        .join(VersionRow, VersionRow.id == DeploymentRow.version_id)
        .join(ModelRow, ModelRow.id == VersionRow.model_id)
        .order_by(ModelRow.name, VersionRow.number)
    )
    with db.read() as s:
        return [_spec(name, number, row) for row, name, number in s.execute(query)]
