"""Reading registry rows inside a session: lookups by name or reference, and the
conversion of rows to the :mod:`maas.registry.schemas` the API and CLI show.

Every function takes the caller's open :class:`~sqlalchemy.orm.Session`, so a lookup and
the write that follows it share one transaction.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from maas.errors import NotFoundError
from maas.registry.models import AliasRow, ModelRow, VersionRow
from maas.registry.refs import DEFAULT_ALIAS, ModelRef, validate_model_name
from maas.registry.schemas import FileInfo, ModelInfo, VersionInfo


def model_row(s: Session, name: str) -> ModelRow:
    validate_model_name(name)
    row = s.scalar(select(ModelRow).where(ModelRow.name == name))
    if row is None:
        raise NotFoundError(f"model {name!r} not found", param="model")
    return row


def version_row(s: Session, ref: ModelRef) -> VersionRow:
    model = model_row(s, ref.name)
    if ref.version is not None:
        row = s.scalar(
            select(VersionRow).where(
                VersionRow.model_id == model.id, VersionRow.number == ref.version
            )
        )
        if row is None:
            raise NotFoundError(f"version {ref} not found", param="model")
        return row
    alias = ref.alias or DEFAULT_ALIAS
    aliased = s.scalar(
        select(AliasRow).where(AliasRow.model_id == model.id, AliasRow.name == alias)
    )
    if aliased is not None:
        return aliased.version
    if ref.alias is not None:
        raise NotFoundError(f"model {ref.name!r} has no alias {ref.alias!r}", param="model")
    latest = s.scalar(
        select(VersionRow)
        .where(VersionRow.model_id == model.id, VersionRow.status == "ready")
        .order_by(VersionRow.number.desc())
        .limit(1)
    )
    if latest is None:
        raise NotFoundError(f"model {ref.name!r} has no ready version", param="model")
    return latest


def aliases_of(s: Session, version_id: int) -> list[str]:
    return sorted(s.scalars(select(AliasRow.name).where(AliasRow.version_id == version_id)))


def aliases_map(s: Session, model_id: int) -> dict[str, int]:
    rows = s.execute(
        select(AliasRow.name, VersionRow.number)
        .join(VersionRow, AliasRow.version_id == VersionRow.id)
        .where(AliasRow.model_id == model_id)
        .order_by(AliasRow.name)
    )
    return {alias: number for alias, number in rows}


def model_info(s: Session, row: ModelRow) -> ModelInfo:
    count, latest = s.execute(
        select(func.count(VersionRow.id), func.max(VersionRow.number)).where(
            VersionRow.model_id == row.id
        )
    ).one()
    return ModelInfo(
        name=row.name,
        task=row.task,
        owner=row.owner,
        description=row.description,
        tags=row.tags,
        latest_version=latest,
        version_count=count,
        aliases=aliases_map(s, row.id),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def version_info(s: Session, row: VersionRow, *, with_files: bool = False) -> VersionInfo:
    parent = None
    if row.parent is not None:
        parent = f"{row.parent.model.name}:{row.parent.number}"
    return VersionInfo(
        model=row.model.name,
        version=row.number,
        task=row.model.task,
        format=row.format,
        digest=row.digest,
        size_bytes=row.size_bytes,
        status=row.status,
        description=row.description,
        metadata=row.meta,
        metrics=row.metrics,
        params=row.params,
        tags=row.tags,
        parent=parent,
        job_id=row.job_id,
        aliases=aliases_of(s, row.id),
        created_at=row.created_at,
        created_by=row.created_by,
        files=[FileInfo(path=f.path, size=f.size, sha256=f.sha256) for f in row.files]
        if with_files
        else None,
    )
