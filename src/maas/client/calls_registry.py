"""Descriptions of the registry calls: models, versions (push, download), aliases, gc."""

from __future__ import annotations

import os
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from maas.client.calls import ADMIN, Call, Local, Plan, Upload, endpoint, perform, query, segment
from maas.registry.refs import ModelRef
from maas.registry.schemas import AliasEvent, GcResult, ModelInfo, VersionInfo


def version_path(ref: str) -> str:
    """``name:3`` -> ``/admin/v1/models/name/versions/3`` (an alias, or ``production``)."""
    parsed = ModelRef.parse(ref)
    selector = str(parsed.version) if parsed.version is not None else (parsed.alias or "production")
    return f"{ADMIN}/models/{segment(parsed.name)}/versions/{segment(selector)}"


def model_path(name: str) -> str:
    return f"{ADMIN}/models/{segment(name)}"


def _model(response: httpx.Response) -> ModelInfo:
    return ModelInfo.model_validate(response.json())


def _models(response: httpx.Response) -> list[ModelInfo]:
    return [ModelInfo.model_validate(m) for m in response.json()]


def _version(response: httpx.Response) -> VersionInfo:
    return VersionInfo.model_validate(response.json())


def _versions(response: httpx.Response) -> list[VersionInfo]:
    return [VersionInfo.model_validate(v) for v in response.json()]


def _ignore(response: httpx.Response) -> None:
    return None


# ----------------------------------------------------------------- models


@endpoint
def list_models(*, task: str | None = None) -> Call[list[ModelInfo]]:
    return Call("GET", f"{ADMIN}/models", params=query(task=task), parse=_models)


@endpoint
def get_model(name: str) -> Call[ModelInfo]:
    return Call("GET", model_path(name), parse=_model)


@endpoint
def create_model(name: str, task: str, **fields: Any) -> Call[ModelInfo]:
    """Register a model without versions (``description``, ``owner``, ``tags``...)."""
    return Call(
        "POST", f"{ADMIN}/models", json={"name": name, "task": task, **fields}, parse=_model
    )


@endpoint
def delete_model(name: str, *, force: bool = False) -> Call[None]:
    return Call("DELETE", model_path(name), params={"force": force}, parse=_ignore)


# --------------------------------------------------------------- versions


@endpoint
def list_versions(name: str) -> Call[list[VersionInfo]]:
    return Call("GET", f"{model_path(name)}/versions", parse=_versions)


@endpoint
def get_version(ref: str, *, with_files: bool = False) -> Call[VersionInfo]:
    """Resolve ``name``, ``name:3`` or ``name@alias`` exactly as the server does."""
    params = {"ref": ref, "files": with_files}
    return Call("GET", f"{ADMIN}/resolve", params=params, parse=_version)


@endpoint
def push(
    source: Path,
    name: str,
    *,
    task: str | None = None,
    description: str = "",
    parent: str | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> Call[VersionInfo]:
    """Upload a directory (packed as tar on the fly) or one file as a new version."""
    params = query(
        description=description,
        task=task or None,
        parent=parent or None,
        filename=source.name if source.is_file() else None,
    )
    return Call(
        "POST",
        f"{model_path(name)}/versions",
        params=params,
        upload=Upload(source, "application/x-tar", on_bytes),
        parse=_version,
        timeout=None,
    )


def _extract(archive: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, mode="r:") as tar:
        tar.extractall(dest, filter="data")


@endpoint
def download(ref: str, dest: Path) -> Plan[VersionInfo]:
    """Fetch a version's files into directory ``dest``."""
    info = yield from perform(get_version.describe(ref))
    handle, name = tempfile.mkstemp(prefix="maas-download-", suffix=".tar")
    os.close(handle)
    archive = Path(name)
    try:
        yield Call("GET", version_path(info.ref) + "/download", save_to=archive, timeout=None)
        yield Local(lambda: _extract(archive, dest))
    finally:
        archive.unlink(missing_ok=True)
    return info


@endpoint
def update_version(ref: str, **fields: Any) -> Call[VersionInfo]:
    """Change a version's description, metrics or params."""
    return Call("PATCH", version_path(ref), json=fields, parse=_version)


@endpoint
def archive(ref: str) -> Call[VersionInfo]:
    return Call("POST", version_path(ref) + "/archive", parse=_version)


@endpoint
def restore(ref: str) -> Call[VersionInfo]:
    return Call("POST", version_path(ref) + "/restore", parse=_version)


@endpoint
def delete_version(ref: str) -> Call[None]:
    return Call("DELETE", version_path(ref), parse=_ignore)


@endpoint
def lineage(ref: str) -> Call[list[VersionInfo]]:
    """The version, its parent, the parent's parent... (each with the job that made it)."""
    return Call("GET", version_path(ref) + "/lineage", parse=_versions)


# ---------------------------------------------------------------- aliases


@endpoint
def set_alias(name: str, alias: str, version: int, *, reason: str = "") -> Call[VersionInfo]:
    return Call(
        "PUT",
        f"{model_path(name)}/aliases/{segment(alias)}",
        json={"version": version, "reason": reason},
        parse=_version,
    )


@endpoint
def delete_alias(name: str, alias: str) -> Call[None]:
    return Call("DELETE", f"{model_path(name)}/aliases/{segment(alias)}", parse=_ignore)


def _events(response: httpx.Response) -> list[AliasEvent]:
    return [AliasEvent.model_validate(e) for e in response.json()]


@endpoint
def alias_history(name: str, alias: str | None = None) -> Call[list[AliasEvent]]:
    """Every move of ``alias`` (or of all the model's aliases), oldest first."""
    path = f"{model_path(name)}/aliases/{segment(alias)}/history" if alias else None
    return Call("GET", path or f"{model_path(name)}/history", parse=_events)


@endpoint
def rollback(name: str, alias: str) -> Call[VersionInfo]:
    """Point ``alias`` back where it was before its last move."""
    return Call("POST", f"{model_path(name)}/aliases/{segment(alias)}/rollback", parse=_version)


def _gc(response: httpx.Response) -> GcResult:
    return GcResult.model_validate(response.json())


@endpoint
def gc(*, grace_seconds: int | None = None) -> Call[GcResult]:
    """Remove blobs no version references (older than the grace)."""
    return Call("POST", f"{ADMIN}/gc", params=query(grace_seconds=grace_seconds), parse=_gc)
