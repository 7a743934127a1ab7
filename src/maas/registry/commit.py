"""The one transaction that turns stored blobs into a version row.

Crash safety of a push rests on ordering: every blob is stored (fsynced and
renamed) *before* this transaction creates the version row and its file rows.
A kill at any point leaves either no row (and orphan blobs that ``gc``
removes) or a complete version.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError as SAIntegrityError

from maas.errors import ConflictError, InvalidRequestError
from maas.registry.aliases import alias_first_version
from maas.registry.artifacts import Manifest
from maas.registry.db import Database
from maas.registry.formats import DATASET_TASK
from maas.registry.models import ModelRow, VersionFileRow, VersionRow, utcnow
from maas.registry.refs import ModelRef
from maas.registry.rows import version_info, version_row
from maas.registry.schemas import VersionInfo


def create_version(
    db: Database,
    name: str,
    manifest: Manifest,
    *,
    fmt: str,
    task: str | None,
    task_hint: str | None,
    metadata: dict[str, Any],
    description: str,
    params: dict[str, Any],
    metrics: dict[str, Any],
    tags: dict[str, Any],
    parent: str | None,
    job_id: str | None,
    created_by: str | None,
) -> VersionInfo:
    """Create the next version of ``name`` (and the model, on its first push) over
    ``manifest``, whose blobs are already stored."""
    # Two first pushes of a new model can race to insert its row (Postgres
    # runs them concurrently; SQLite serialises them). The loser retries
    # and finds the winner's row.
    for attempt in range(3):
        try:
            return _insert_version(
                db,
                name,
                manifest,
                fmt=fmt,
                task=task,
                task_hint=task_hint,
                metadata=metadata,
                description=description,
                params=params,
                metrics=metrics,
                tags=tags,
                parent=parent,
                job_id=job_id,
                created_by=created_by,
            )
        except SAIntegrityError as exc:
            if attempt == 2:
                raise ConflictError(f"could not create a version of {name!r}: {exc.orig}") from exc
    raise AssertionError("unreachable")  # pragma: no cover


def _insert_version(
    db: Database,
    name: str,
    manifest: Manifest,
    *,
    fmt: str,
    task: str | None,
    task_hint: str | None,
    metadata: dict[str, Any],
    description: str,
    params: dict[str, Any],
    metrics: dict[str, Any],
    tags: dict[str, Any],
    parent: str | None,
    job_id: str | None,
    created_by: str | None,
) -> VersionInfo:
    with db.write() as s:
        model = s.scalar(select(ModelRow).where(ModelRow.name == name))
        if model is None:
            chosen = task or task_hint
            if chosen is None:
                raise InvalidRequestError(
                    f"cannot infer the task of {name!r} from its files; pass a task "
                    "(embeddings, text-classification, text-generation, "
                    "image-classification, tensor)",
                    param="task",
                )
            model = ModelRow(name=name, task=chosen, description="", tags={})
            s.add(model)
            s.flush()
        elif task is not None and task != model.task:
            raise ConflictError(
                f"model {name!r} has task {model.task!r}, not {task!r}", param="task"
            )
        parent_id = None
        if parent is not None:
            parent_id = version_row(s, ModelRef.parse(parent)).id
        # Atomic counter bump: the write transaction serialises concurrent
        # pushes, so each gets the next number and none is ever reused.
        number = s.execute(
            update(ModelRow)
            .where(ModelRow.id == model.id)
            .values(last_version=ModelRow.last_version + 1, updated_at=utcnow())
            .returning(ModelRow.last_version)
        ).scalar_one()
        row = VersionRow(
            model_id=model.id,
            number=number,
            format=fmt,
            digest=manifest.digest,
            size_bytes=manifest.size_bytes,
            status="ready",
            description=description,
            meta=metadata,
            metrics=metrics,
            params=params,
            tags=tags,
            parent_id=parent_id,
            job_id=job_id,
            created_by=created_by,
        )
        row.files = [
            VersionFileRow(path=f.path, sha256=f.sha256, size=f.size) for f in manifest.files
        ]
        s.add(row)
        s.flush()
        if model.task != DATASET_TASK:
            alias_first_version(s, model, row, actor=created_by)
        return version_info(s, row, with_files=True)
