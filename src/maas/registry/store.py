"""Registry operations: models, immutable versions, aliases with history, gc.

Crash safety of a push rests on ordering: every blob is stored (fsynced and
renamed) *before* the one transaction that creates the version row and its
file rows (:mod:`maas.registry.commit`). A kill at any point leaves either no
row (and orphan blobs that ``gc`` removes) or a complete version. Alias moves
and their history are in :mod:`maas.registry.aliases`; row lookups and their
conversion to schemas in :mod:`maas.registry.rows`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.orm import selectinload

from maas import crypto
from maas.config import Settings
from maas.errors import ConflictError, InvalidRequestError
from maas.registry import aliases, deployments, routing
from maas.registry.artifacts import FileEntry, Manifest, open_store
from maas.registry.blobcache import VersionCache
from maas.registry.blobmarker import check_writable, mark_encrypted
from maas.registry.commit import create_version
from maas.registry.db import Database, migrate
from maas.registry.deployments import DeploymentSpec
from maas.registry.epochs import track_registry_changes
from maas.registry.formats import detect_format, metadata_for_task, validate_task
from maas.registry.heads import require_classification_head
from maas.registry.models import AliasRow, ModelRow, VersionFileRow, VersionRow, utcnow
from maas.registry.refs import ModelRef, validate_model_name
from maas.registry.routing import RoutingPolicy
from maas.registry.rows import aliases_of, model_info, model_row, version_info, version_row
from maas.registry.schemas import AliasEvent, GcResult, ModelInfo, VersionInfo
from maas.registry.sources import extract_archive, scan_directory

STATUSES = ("pending", "ready", "failed", "archived")


class Registry:
    """The versioned model registry over one database and one blob store."""

    def __init__(self, settings: Settings, *, run_migrations: bool = True) -> None:
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        settings.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(settings.resolved_database_url)
        # Every write that changes models, versions or aliases tells the other processes'
        # caches (the "registry" change epoch).
        track_registry_changes(self.db)
        if run_migrations:
            migrate(self.db, lock_dir=settings.home)
        self.artifacts = open_store(settings)
        self.cache = VersionCache(settings.cache_dir, max_bytes=settings.cache_max_bytes)
        master_key = settings.master_key_bytes
        self._key_id = crypto.key_id(master_key) if master_key is not None else None
        if self._key_id is not None:
            # A process started with the key marks the store at once, so that a
            # process without it refuses to write even before the first push.
            mark_encrypted(self.db, self._key_id)

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
                return model_info(s, row)
        except SAIntegrityError as exc:
            raise ConflictError(f"model {name!r} already exists", param="name") from exc

    def get_model(self, name: str) -> ModelInfo:
        with self.db.read() as s:
            return model_info(s, model_row(s, name))

    def list_models(self, *, task: str | None = None) -> list[ModelInfo]:
        with self.db.read() as s:
            query = select(ModelRow).order_by(ModelRow.name)
            if task is not None:
                query = query.where(ModelRow.task == task)
            return [model_info(s, row) for row in s.scalars(query)]

    def update_model(
        self,
        name: str,
        *,
        description: str | None = None,
        owner: str | None = None,
        tags: dict[str, Any] | None = None,
    ) -> ModelInfo:
        with self.db.write() as s:
            row = model_row(s, name)
            if description is not None:
                row.description = description
            if owner is not None:
                row.owner = owner
            if tags is not None:
                row.tags = tags
            row.updated_at = utcnow()
            return model_info(s, row)

    def delete_model(self, name: str, *, force: bool = False) -> None:
        """Delete a model. With versions left it needs ``force``; blobs go at the next gc."""
        with self.db.write() as s:
            row = model_row(s, name)
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
        # An encrypted store takes no plaintext blobs (maas.registry.blobmarker).
        check_writable(self.db, self._key_id)
        # Blobs first (see module docstring); rows only after all of them exist.
        entries = []
        for f in files:
            stored = self.artifacts.put_file(f.path, on_bytes)
            entries.append(FileEntry(f.relpath, stored.size, stored.sha256))
        manifest = Manifest.of(entries)
        return create_version(
            self.db,
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

    def list_versions(self, name: str) -> list[VersionInfo]:
        with self.db.read() as s:
            model = model_row(s, name)
            rows = s.scalars(
                select(VersionRow)
                .where(VersionRow.model_id == model.id)
                .order_by(VersionRow.number)
            )
            return [version_info(s, row) for row in rows]

    def get_version(self, ref: str | ModelRef, *, with_files: bool = False) -> VersionInfo:
        """Resolve ``name``, ``name:3`` or ``name@alias`` to one version."""
        parsed = ModelRef.parse(ref) if isinstance(ref, str) else ref
        with self.db.read() as s:
            return version_info(s, version_row(s, parsed), with_files=with_files)

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
            row = version_row(s, ModelRef.parse(ref))
            if metrics:
                row.metrics = {**row.metrics, **metrics}
            if tags is not None:
                row.tags = tags
            if description is not None:
                row.description = description
            return version_info(s, row)

    def set_status(self, ref: str, status: str) -> VersionInfo:
        if status not in STATUSES:
            raise InvalidRequestError(
                f"unknown status {status!r}; expected one of {', '.join(STATUSES)}",
                param="status",
            )
        with self.db.write() as s:
            row = version_row(s, ModelRef.parse(ref))
            if status == "archived":
                names = aliases_of(s, row.id)
                if names:
                    raise ConflictError(
                        f"{row.model.name}:{row.number} is the target of alias(es) "
                        f"{', '.join(names)}; move or remove them before archiving",
                    )
            row.status = status
            return version_info(s, row)

    def archive_version(self, ref: str) -> VersionInfo:
        return self.set_status(ref, "archived")

    def restore_version(self, ref: str) -> VersionInfo:
        with self.db.read() as s:
            row = version_row(s, ModelRef.parse(ref))
            if row.status != "archived":
                raise ConflictError(f"{ref} is not archived (status {row.status!r})")
        return self.set_status(ref, "ready")

    def delete_version(self, ref: str) -> VersionInfo:
        """Delete a version's row; its blobs are reclaimed by the next gc."""
        with self.db.write() as s:
            row = version_row(s, ModelRef.parse(ref))
            names = aliases_of(s, row.id)
            if names:
                raise ConflictError(
                    f"{row.model.name}:{row.number} is the target of alias(es) "
                    f"{', '.join(names)}; move or remove them before deleting",
                )
            info = version_info(s, row)
            s.delete(row)
            return info

    def manifest(self, ref: str | ModelRef) -> Manifest:
        info = self.get_version(ref, with_files=True)
        assert info.files is not None
        return Manifest.of(FileEntry(f.path, f.size, f.sha256) for f in info.files)

    def materialize(self, ref: str | ModelRef) -> Path:
        """Return a local directory holding the version's verified files (cached by digest)."""
        return self.cache.get(self.manifest(ref), self.artifacts)

    # ----------------------------------------------------------------- aliases
    # The operations live in maas.registry.aliases; these bind them to this registry.

    def set_alias(
        self,
        name: str,
        alias: str,
        version: int,
        *,
        actor: str | None = None,
        reason: str = "",
    ) -> VersionInfo:
        return aliases.set_alias(self.db, name, alias, version, actor=actor, reason=reason)

    def delete_alias(self, name: str, alias: str, *, actor: str | None = None) -> None:
        aliases.delete_alias(self.db, name, alias, actor=actor)

    def list_aliases(self, name: str) -> dict[str, int]:
        return aliases.list_aliases(self.db, name)

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasEvent]:
        """Every move of the model's aliases (or one alias), oldest first."""
        return aliases.alias_history(self.db, name, alias)

    def rollback(self, name: str, alias: str, *, actor: str | None = None) -> VersionInfo:
        """Point ``alias`` back at the version it held before its last move."""
        return aliases.rollback(self.db, name, alias, actor=actor)

    # ------------------------------------------------------------- deployments
    # How each version is served, for every instance: maas.registry.deployments.

    def get_deployment(self, model: str, version: int) -> DeploymentSpec:
        return deployments.get_deployment(self.db, model, version)

    def set_deployment(
        self, model: str, version: int, *, actor: str | None, **changes: Any
    ) -> DeploymentSpec:
        return deployments.set_deployment(self.db, model, version, actor=actor, **changes)

    def list_deployments(self) -> list[DeploymentSpec]:
        return deployments.list_deployments(self.db)

    def get_routing(self, model: str) -> RoutingPolicy | None:
        """The model's routing policy (``registry/routing.py`` sets and clears it)."""
        return routing.get_routing(self.db, model)

    # ------------------------------------------------------------- maintenance

    def referenced_blobs(self) -> set[str]:
        with self.db.read() as s:
            return set(s.scalars(select(VersionFileRow.sha256).distinct()))

    def gc(self, *, grace_seconds: float | None = None) -> GcResult:
        """Remove blobs no version references (and stale caches of deleted versions)."""
        grace = self.settings.gc_grace_seconds if grace_seconds is None else grace_seconds
        referenced = self.referenced_blobs()
        outcome = self.artifacts.collect(referenced, grace_seconds=grace)
        with self.db.read() as s:
            digests = {d.removeprefix("sha256:") for d in s.scalars(select(VersionRow.digest))}
        self.cache.retain(digests)
        return GcResult(
            removed_blobs=len(outcome.removed),
            kept_blobs=outcome.kept,
            freed_bytes=sum(blob.size for blob in outcome.removed),
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
                    if not self.artifacts.has(f.sha256):
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
