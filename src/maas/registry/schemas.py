"""Plain views of registry records, shared by the API, the CLI and the SDK."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything maas stores is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


class _View(BaseModel):
    model_config = ConfigDict(frozen=True)


class FileInfo(_View):
    path: str
    size: int
    sha256: str


class VersionInfo(_View):
    model: str
    version: int
    task: str
    format: str
    digest: str = Field(description="sha256 of the canonical manifest of all files")
    size_bytes: int
    status: str
    description: str
    metadata: dict[str, Any]
    metrics: dict[str, Any]
    params: dict[str, Any]
    tags: dict[str, Any]
    parent: str | None = Field(description="reference of the version this one derives from")
    job_id: str | None
    aliases: list[str]
    created_at: UtcDatetime
    created_by: str | None
    files: list[FileInfo] | None = None

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.version}"


class ModelInfo(_View):
    name: str
    task: str
    owner: str | None
    description: str
    tags: dict[str, Any]
    latest_version: int | None
    version_count: int
    aliases: dict[str, int]
    created_at: UtcDatetime
    updated_at: UtcDatetime


class AliasEvent(_View):
    model: str
    alias: str
    from_version: int | None
    to_version: int | None
    actor: str | None
    reason: str
    at: UtcDatetime


class GcResult(_View):
    removed_blobs: int
    kept_blobs: int
    freed_bytes: int
