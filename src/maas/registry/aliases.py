"""Aliases: movable names (``production``, ``canary``) that point at one ready version.

Every move is recorded in the alias history (who, when, from which version, why), so a
rollback is one call: it points the alias back at the version it held before its last move.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from maas.errors import ConflictError, NotFoundError
from maas.registry.db import Database
from maas.registry.models import AliasEventRow, AliasRow, ModelRow, VersionRow, utcnow
from maas.registry.refs import DEFAULT_ALIAS, ModelRef, validate_alias
from maas.registry.rows import aliases_map, model_row, version_info, version_row
from maas.registry.schemas import AliasEvent, VersionInfo


def set_alias(
    db: Database,
    name: str,
    alias: str,
    version: int,
    *,
    actor: str | None = None,
    reason: str = "",
) -> VersionInfo:
    validate_alias(alias)
    with db.write() as s:
        model = model_row(s, name)
        target = version_row(s, ModelRef(name, version=version))
        move_alias(s, model, alias, target, actor=actor, reason=reason)
        return version_info(s, target)


def move_alias(
    s: Session,
    model: ModelRow,
    alias: str,
    target: VersionRow,
    *,
    actor: str | None,
    reason: str,
) -> None:
    """Point ``alias`` at ``target`` and record the move, inside the caller's transaction
    (a rollout's promotion moves ``production`` in the transaction that ends it)."""
    if target.status != "ready":
        raise ConflictError(
            f"{model.name}:{target.number} has status {target.status!r}; only ready versions "
            "can carry an alias",
            param="version",
        )
    existing = s.scalar(
        select(AliasRow).where(AliasRow.model_id == model.id, AliasRow.name == alias)
    )
    previous = existing.version.number if existing is not None else None
    if existing is None:
        s.add(AliasRow(model_id=model.id, name=alias, version_id=target.id, updated_by=actor))
    elif existing.version_id != target.id:
        existing.version_id = target.id
        existing.updated_at = utcnow()
        existing.updated_by = actor
    if previous != target.number:
        s.add(
            AliasEventRow(
                model_id=model.id,
                alias=alias,
                from_version=previous,
                to_version=target.number,
                actor=actor,
                reason=reason,
            )
        )
    s.flush()


def delete_alias(db: Database, name: str, alias: str, *, actor: str | None = None) -> None:
    with db.write() as s:
        model = model_row(s, name)
        existing = s.scalar(
            select(AliasRow).where(AliasRow.model_id == model.id, AliasRow.name == alias)
        )
        if existing is None:
            raise NotFoundError(f"model {name!r} has no alias {alias!r}", param="alias")
        s.add(
            AliasEventRow(
                model_id=model.id,
                alias=alias,
                from_version=existing.version.number,
                to_version=None,
                actor=actor,
                reason="deleted",
            )
        )
        s.delete(existing)


def list_aliases(db: Database, name: str) -> dict[str, int]:
    with db.read() as s:
        return aliases_map(s, model_row(s, name).id)


def alias_history(db: Database, name: str, alias: str | None = None) -> list[AliasEvent]:
    """Every move of the model's aliases (or one alias), oldest first."""
    with db.read() as s:
        model = model_row(s, name)
        query = (
            select(AliasEventRow)
            .where(AliasEventRow.model_id == model.id)
            .order_by(AliasEventRow.id)
        )
        if alias is not None:
            query = query.where(AliasEventRow.alias == alias)
        return [
            AliasEvent(
                model=name,
                alias=e.alias,
                from_version=e.from_version,
                to_version=e.to_version,
                actor=e.actor,
                reason=e.reason,
                at=e.at,
            )
            for e in s.scalars(query)
        ]


def rollback(db: Database, name: str, alias: str, *, actor: str | None = None) -> VersionInfo:
    """Point ``alias`` back at the version it held before its last move.

    Like ``kubectl rollout undo``, a second rollback undoes the first.
    """
    history = [e for e in alias_history(db, name, alias) if e.to_version is not None]
    if not history:
        raise NotFoundError(f"model {name!r} has no alias {alias!r}", param="alias")
    last = history[-1]
    if last.from_version is None:
        raise ConflictError(
            f"{name}@{alias} has never pointed at another version; nothing to roll back to"
        )
    return set_alias(
        db, name, alias, last.from_version, actor=actor, reason=f"rollback from {last.to_version}"
    )


def alias_first_version(s: Session, model: ModelRow, row: VersionRow, *, actor: str | None) -> None:
    """Give a model's first version the ``production`` alias.

    The bare name then keeps meaning the version that was served first:
    versions made later (a quantized copy, a retrain, a second push) are
    served under the bare name only once promoted. A model that already has
    other versions keeps whatever its aliases say.
    """
    others = s.scalar(
        select(func.count())
        .select_from(VersionRow)
        .where(VersionRow.model_id == model.id, VersionRow.id != row.id)
    )
    aliased = s.scalar(
        select(AliasRow.id).where(AliasRow.model_id == model.id, AliasRow.name == DEFAULT_ALIAS)
    )
    if others or aliased is not None:
        return
    s.add(AliasRow(model_id=model.id, name=DEFAULT_ALIAS, version_id=row.id, updated_by=actor))
    s.add(
        AliasEventRow(
            model_id=model.id,
            alias=DEFAULT_ALIAS,
            from_version=None,
            to_version=row.number,
            actor=actor,
            reason="first version",
        )
    )
    s.flush()
