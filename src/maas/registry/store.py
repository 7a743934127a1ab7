"""Registry operations: models, immutable versions, aliases with history, gc.

Crash safety of a push rests on ordering: every blob is stored (fsynced and
renamed) *before* the one transaction that creates the version row and its
file rows. A kill at any point leaves either no row (and orphan blobs that
``gc`` removes) or a complete version.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.orm import Session, selectinload

from maas.config import Settings
from maas.errors import ConflictError, InvalidRequestError, NotFoundError
from maas.registry.artifacts import ArtifactStore, FileEntry, Manifest
from maas.registry.db import Database, migrate
from maas.registry.formats import (
    DATASET_TASK,
    detect_format,
    metadata_for_task,
    validate_task,
)
from maas.registry.heads import require_classification_head
from maas.registry.models import (
    AliasEventRow,
    AliasRow,
    ModelRow,
    VersionFileRow,
    VersionRow,
    utcnow,
)
from maas.registry.refs import DEFAULT_ALIAS, ModelRef, validate_alias, validate_model_name
from maas.registry.schemas import AliasEvent, FileInfo, GcResult, ModelInfo, VersionInfo
from maas.registry.sources import extract_archive, scan_directory

STATUSES = ("pending", "ready", "failed", "archived")


class Registry:
    """The versioned model registry over one database and one blob store."""

    def __init__(self, settings: Settings, *, run_migrations: bool = True) -> None:
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        settings.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(settings.resolved_database_url)
        if run_migrations:
            migrate(self.db, lock_dir=settings.home)
        self.artifacts = ArtifactStore(settings.blobs_dir, master_key=settings.master_key_bytes)

    def close(self) -> None:
        self.db.dispose()

    # ------------------------------------------------------------------ models

    def create_model(
        self,
        name: str,
        task: str,
        *,
        owner: str | None = None,
        description: str = "",
        tags: dict[str, Any] | None = None,
    ) -> ModelInfo:
        validate_model_name(name)
        validate_task(task)
        try:
            with self.db.write() as s:
                if s.scalar(select(ModelRow.id).where(ModelRow.name == name)) is not None:
                    raise ConflictError(f"model {name!r} already exists", param="name")
                row = ModelRow(
                    name=name, task=task, owner=owner, description=description, tags=tags or {}
                )
                s.add(row)
                s.flush()
                return self._model_info(s, row)
        except SAIntegrityError as exc:
            raise ConflictError(f"model {name!r} already exists", param="name") from exc

    def get_model(self, name: str) -> ModelInfo:
        with self.db.read() as s:
            return self._model_info(s, self._model_row(s, name))

    def list_models(self, *, task: str | None = None) -> list[ModelInfo]:
        with self.db.read() as s:
            query = select(ModelRow).order_by(ModelRow.name)
            if task is not None:
                query = query.where(ModelRow.task == task)
            return [self._model_info(s, row) for row in s.scalars(query)]

    def update_model(
        self,
        name: str,
        *,
        description: str | None = None,
        owner: str | None = None,
        tags: dict[str, Any] | None = None,
    ) -> ModelInfo:
        with self.db.write() as s:
            row = self._model_row(s, name)
            if description is not None:
                row.description = description
            if owner is not None:
                row.owner = owner
            if tags is not None:
                row.tags = tags
            row.updated_at = utcnow()
            return self._model_info(s, row)

    def delete_model(self, name: str, *, force: bool = False) -> None:
        """Delete a model. With versions left it needs ``force``; blobs go at the next gc."""
        with self.db.write() as s:
            row = self._model_row(s, name)
            count = s.scalar(select(func.count()).where(VersionRow.model_id == row.id)) or 0
            if count and not force:
                raise ConflictError(
                    f"model {name!r} still has {count} version(s); delete them first "
                    "or pass force=true",
                    param="name",
                )
            # Aliases reference versions with RESTRICT; drop them first.
            for alias in s.scalars(select(AliasRow).where(AliasRow.model_id == row.id)):
                s.delete(alias)
            s.flush()
            s.delete(row)

    # ---------------------------------------------------------------- versions

    def push(
        self,
        source: Path,
        name: str,
        *,
        task: str | None = None,
        description: str = "",
        params: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        tags: dict[str, Any] | None = None,
        parent: str | None = None,
        job_id: str | None = None,
        created_by: str | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> VersionInfo:
        """Store a model directory (or one ``.onnx`` file) as the next version of ``name``."""
        validate_model_name(name)
        if task is not None:
            validate_task(task)
        files = scan_directory(source, allow_unsafe=self.settings.allow_unsafe_formats)
        detected = detect_format(source)
        effective_task = task or self._existing_task(name) or detected.task_hint
        if (
            detected.format == "hf"
            and effective_task == "text-classification"
            and not detected.metadata.get("unsafe_weights")
        ):
            require_classification_head(source)
        # Blobs first (see module docstring); rows only after all of them exist.
        entries = []
        for f in files:
            stored = self.artifacts.put_file(f.path, on_bytes)
            entries.append(FileEntry(f.relpath, stored.size, stored.sha256))
        manifest = Manifest.of(entries)
        return self._create_version(
            name,
            manifest,
            fmt=detected.format,
            task=task,
            task_hint=detected.task_hint,
            metadata=metadata_for_task(detected.metadata, effective_task),
            description=description,
            params=params or {},
            metrics=metrics or {},
            tags=tags or {},
            parent=parent,
            job_id=job_id,
            created_by=created_by,
        )

    def _existing_task(self, name: str) -> str | None:
        with self.db.read() as s:
            task: str | None = s.scalar(select(ModelRow.task).where(ModelRow.name == name))
            return task

    def push_archive(
        self,
        archive: Path,
        name: str,
        *,
        filename: str | None = None,
        content_type: str | None = None,
        **kwargs: Any,
    ) -> VersionInfo:
        """Push an uploaded tar/zip archive (or a single file named ``filename``).

        The archive type is read from the file's leading bytes; ``content_type``
        (the upload's header) only helps when those do not tell.
        """
        validate_model_name(name)
        staging = Path(tempfile.mkdtemp(dir=self.settings.tmp_dir, prefix="upload-"))
        try:
            if filename is not None:
                from maas.registry.sources import check_relpath, check_safe_format

                rel = check_relpath(filename)
                if "/" in rel:
                    raise InvalidRequestError("filename must not contain '/'", param="filename")
                check_safe_format(rel, allow_unsafe=self.settings.allow_unsafe_formats)
                target = staging / rel
                shutil.copyfile(archive, target)
                return self.push(target, name, **kwargs)
            extract_archive(
                archive,
                staging,
                allow_unsafe=self.settings.allow_unsafe_formats,
                max_bytes=self.settings.max_upload_bytes,
                content_type=content_type,
            )
            return self.push(staging, name, **kwargs)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _create_version(
        self,
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
        # Two first pushes of a new model can race to insert its row (Postgres
        # runs them concurrently; SQLite serialises them). The loser retries
        # and finds the winner's row.
        for attempt in range(3):
            try:
                return self._insert_version(
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
                    raise ConflictError(
                        f"could not create a version of {name!r}: {exc.orig}"
                    ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _insert_version(
        self,
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
        with self.db.write() as s:
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
                parent_id = self._version_row(s, ModelRef.parse(parent)).id
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
                self._alias_first_version(s, model, row, actor=created_by)
            return self._version_info(s, row, with_files=True)

    @staticmethod
    def _alias_first_version(
        s: Session, model: ModelRow, row: VersionRow, *, actor: str | None
    ) -> None:
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

    def list_versions(self, name: str) -> list[VersionInfo]:
        with self.db.read() as s:
            model = self._model_row(s, name)
            rows = s.scalars(
                select(VersionRow)
                .where(VersionRow.model_id == model.id)
                .order_by(VersionRow.number)
            )
            return [self._version_info(s, row) for row in rows]

    def get_version(self, ref: str | ModelRef, *, with_files: bool = False) -> VersionInfo:
        """Resolve ``name``, ``name:3`` or ``name@alias`` to one version."""
        parsed = ModelRef.parse(ref) if isinstance(ref, str) else ref
        with self.db.read() as s:
            return self._version_info(s, self._version_row(s, parsed), with_files=with_files)

    resolve = get_version

    def update_version(
        self,
        ref: str,
        *,
        metrics: dict[str, Any] | None = None,
        tags: dict[str, Any] | None = None,
        description: str | None = None,
    ) -> VersionInfo:
        """Annotate a version. Its files and digest never change; metrics merge."""
        with self.db.write() as s:
            row = self._version_row(s, ModelRef.parse(ref))
            if metrics:
                row.metrics = {**row.metrics, **metrics}
            if tags is not None:
                row.tags = tags
            if description is not None:
                row.description = description
            return self._version_info(s, row)

    def set_status(self, ref: str, status: str) -> VersionInfo:
        if status not in STATUSES:
            raise InvalidRequestError(
                f"unknown status {status!r}; expected one of {', '.join(STATUSES)}",
                param="status",
            )
        with self.db.write() as s:
            row = self._version_row(s, ModelRef.parse(ref))
            if status == "archived":
                names = self._aliases_of(s, row.id)
                if names:
                    raise ConflictError(
                        f"{row.model.name}:{row.number} is the target of alias(es) "
                        f"{', '.join(names)}; move or remove them before archiving",
                    )
            row.status = status
            return self._version_info(s, row)

    def archive_version(self, ref: str) -> VersionInfo:
        return self.set_status(ref, "archived")

    def restore_version(self, ref: str) -> VersionInfo:
        with self.db.read() as s:
            row = self._version_row(s, ModelRef.parse(ref))
            if row.status != "archived":
                raise ConflictError(f"{ref} is not archived (status {row.status!r})")
        return self.set_status(ref, "ready")

    def delete_version(self, ref: str) -> VersionInfo:
        """Delete a version's row; its blobs are reclaimed by the next gc."""
        with self.db.write() as s:
            row = self._version_row(s, ModelRef.parse(ref))
            names = self._aliases_of(s, row.id)
            if names:
                raise ConflictError(
                    f"{row.model.name}:{row.number} is the target of alias(es) "
                    f"{', '.join(names)}; move or remove them before deleting",
                )
            info = self._version_info(s, row)
            s.delete(row)
            return info

    def manifest(self, ref: str | ModelRef) -> Manifest:
        info = self.get_version(ref, with_files=True)
        assert info.files is not None
        return Manifest.of(FileEntry(f.path, f.size, f.sha256) for f in info.files)

    def materialize(self, ref: str | ModelRef) -> Path:
        """Return a local directory holding the version's verified files (cached by digest)."""
        manifest = self.manifest(ref)
        dest = self.settings.cache_dir / manifest.digest.removeprefix("sha256:")
        return self.artifacts.materialize(manifest, dest)

    # ----------------------------------------------------------------- aliases

    def set_alias(
        self,
        name: str,
        alias: str,
        version: int,
        *,
        actor: str | None = None,
        reason: str = "",
    ) -> VersionInfo:
        validate_alias(alias)
        with self.db.write() as s:
            model = self._model_row(s, name)
            target = self._version_row(s, ModelRef(name, version=version))
            if target.status != "ready":
                raise ConflictError(
                    f"{name}:{version} has status {target.status!r}; only ready versions "
                    "can carry an alias",
                    param="version",
                )
            existing = s.scalar(
                select(AliasRow).where(AliasRow.model_id == model.id, AliasRow.name == alias)
            )
            previous = existing.version.number if existing is not None else None
            if existing is None:
                s.add(
                    AliasRow(model_id=model.id, name=alias, version_id=target.id, updated_by=actor)
                )
            elif existing.version_id != target.id:
                existing.version_id = target.id
                existing.updated_at = utcnow()
                existing.updated_by = actor
            if previous != version:
                s.add(
                    AliasEventRow(
                        model_id=model.id,
                        alias=alias,
                        from_version=previous,
                        to_version=version,
                        actor=actor,
                        reason=reason,
                    )
                )
            s.flush()
            return self._version_info(s, target)

    def delete_alias(self, name: str, alias: str, *, actor: str | None = None) -> None:
        with self.db.write() as s:
            model = self._model_row(s, name)
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

    def list_aliases(self, name: str) -> dict[str, int]:
        with self.db.read() as s:
            return self._aliases_map(s, self._model_row(s, name).id)

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasEvent]:
        """Every move of the model's aliases (or one alias), oldest first."""
        with self.db.read() as s:
            model = self._model_row(s, name)
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

    def rollback(self, name: str, alias: str, *, actor: str | None = None) -> VersionInfo:
        """Point ``alias`` back at the version it held before its last move.

        Like ``kubectl rollout undo``, a second rollback undoes the first.
        """
        history = [e for e in self.alias_history(name, alias) if e.to_version is not None]
        if not history:
            raise NotFoundError(f"model {name!r} has no alias {alias!r}", param="alias")
        last = history[-1]
        if last.from_version is None:
            raise ConflictError(
                f"{name}@{alias} has never pointed at another version; nothing to roll back to"
            )
        return self.set_alias(
            name, alias, last.from_version, actor=actor, reason=f"rollback from {last.to_version}"
        )

    # ------------------------------------------------------------- maintenance

    def referenced_blobs(self) -> set[str]:
        with self.db.read() as s:
            return set(s.scalars(select(VersionFileRow.sha256).distinct()))

    def gc(self, *, grace_seconds: float | None = None) -> GcResult:
        """Remove blobs no version references (and stale caches of deleted versions)."""
        grace = self.settings.gc_grace_seconds if grace_seconds is None else grace_seconds
        referenced = self.referenced_blobs()
        sizes = {sha: path.stat().st_size for sha, path in self.artifacts.iter_blobs()}
        removed = self.artifacts.gc(referenced, grace_seconds=grace)
        with self.db.read() as s:
            digests = {d.removeprefix("sha256:") for d in s.scalars(select(VersionRow.digest))}
        if self.settings.cache_dir.is_dir():
            for cached in self.settings.cache_dir.iterdir():
                if not cached.name.startswith(".") and cached.name not in digests:
                    shutil.rmtree(cached, ignore_errors=True)
        return GcResult(
            removed_blobs=len(removed),
            kept_blobs=len(sizes) - len(removed),
            freed_bytes=sum(sizes.get(sha, 0) for sha in removed),
        )

    def check_consistency(self, *, deep: bool = False) -> list[str]:
        """Problems found: version rows whose blobs are missing, short, or (deep) corrupt."""
        problems: list[str] = []
        with self.db.read() as s:
            rows = s.scalars(select(VersionRow).options(selectinload(VersionRow.files)))
            for row in rows:
                entries = [FileEntry(f.path, f.size, f.sha256) for f in row.files]
                if Manifest.of(entries).digest != row.digest:
                    problems.append(f"version id {row.id}: manifest does not match digest")
                for f in row.files:
                    path = self.artifacts.blob_path(f.sha256)
                    if not path.is_file():
                        problems.append(f"version id {row.id}: {f.path} blob missing")
                    elif not self.artifacts.size_matches(f.sha256, f.size):
                        problems.append(f"version id {row.id}: {f.path} blob has wrong size")
                    elif deep:
                        try:
                            self.artifacts.verify(f.sha256)
                        except Exception as exc:
                            problems.append(f"version id {row.id}: {f.path}: {exc}")
        return problems

    def iter_version_tar(self, ref: str) -> Iterator[bytes]:
        """Stream a version as an uncompressed tar, verifying digests as it goes."""
        from maas.registry.export import iter_tar

        manifest = self.manifest(ref)
        return iter_tar(self.artifacts, manifest)

    # ----------------------------------------------------------------- helpers

    @staticmethod
    def _model_row(s: Session, name: str) -> ModelRow:
        validate_model_name(name)
        row = s.scalar(select(ModelRow).where(ModelRow.name == name))
        if row is None:
            raise NotFoundError(f"model {name!r} not found", param="model")
        return row

    def _version_row(self, s: Session, ref: ModelRef) -> VersionRow:
        model = self._model_row(s, ref.name)
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

    @staticmethod
    def _aliases_of(s: Session, version_id: int) -> list[str]:
        return sorted(s.scalars(select(AliasRow.name).where(AliasRow.version_id == version_id)))

    @staticmethod
    def _aliases_map(s: Session, model_id: int) -> dict[str, int]:
        rows = s.execute(
            select(AliasRow.name, VersionRow.number)
            .join(VersionRow, AliasRow.version_id == VersionRow.id)
            .where(AliasRow.model_id == model_id)
            .order_by(AliasRow.name)
        )
        return {alias: number for alias, number in rows}

    def _model_info(self, s: Session, row: ModelRow) -> ModelInfo:
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
            aliases=self._aliases_map(s, row.id),
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    def _version_info(
        self, s: Session, row: VersionRow, *, with_files: bool = False
    ) -> VersionInfo:
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
            aliases=self._aliases_of(s, row.id),
            created_at=row.created_at,
            created_by=row.created_by,
            files=[FileInfo(path=f.path, size=f.size, sha256=f.sha256) for f in row.files]
            if with_files
            else None,
        )
