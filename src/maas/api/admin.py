"""``/admin/v1``: the management API over the registry."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from maas.api.bodies import JsonBodyRoute
from maas.api.deps import (
    AdmittedDep,
    KeyDep,
    RegistryDep,
    SettingsDep,
    actor,
    require_key,
    run_sync,
    spooled_upload,
    version_ref,
)
from maas.api.schemas.admin import (
    AliasInfo,
    CreateModelRequest,
    DeletedResponse,
    SetAliasRequest,
    UpdateModelRequest,
    UpdateVersionRequest,
)
from maas.errors import InvalidRequestError, PayloadTooLargeError
from maas.registry.gguf import import_dequantized_upload
from maas.registry.refs import ModelRef, validate_model_name
from maas.registry.schemas import AliasEvent, GcResult, ModelInfo, VersionInfo

router = APIRouter(
    prefix="/admin/v1",
    tags=["admin"],
    dependencies=[Depends(require_key)],
    route_class=JsonBodyRoute,
)


def _json_param(raw: str | None, param: str) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(f"{param} must be a JSON object: {exc}", param=param) from exc
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{param} must be a JSON object", param=param)
    return value


# ------------------------------------------------------------------- models


@router.get("/models", response_model=list[ModelInfo])
async def list_models(
    registry: RegistryDep, admitted: AdmittedDep, task: str | None = None
) -> list[ModelInfo]:
    """Models this key may see (its allowlist applies)."""
    models = await run_sync(registry.list_models, task=task)
    return [m for m in models if admitted.allows_model(m.name)]


@router.post("/models", response_model=ModelInfo, status_code=201)
async def create_model(body: CreateModelRequest, registry: RegistryDep) -> ModelInfo:
    return await run_sync(
        registry.create_model,
        body.name,
        body.task,
        owner=body.owner,
        description=body.description,
        tags=body.tags,
    )


@router.get("/models/{name}", response_model=ModelInfo)
async def get_model(name: str, registry: RegistryDep) -> ModelInfo:
    return await run_sync(registry.get_model, name)


@router.patch("/models/{name}", response_model=ModelInfo)
async def update_model(name: str, body: UpdateModelRequest, registry: RegistryDep) -> ModelInfo:
    return await run_sync(
        registry.update_model,
        name,
        description=body.description,
        owner=body.owner,
        tags=body.tags,
    )


@router.delete("/models/{name}", response_model=DeletedResponse)
async def delete_model(name: str, registry: RegistryDep, force: bool = False) -> DeletedResponse:
    await run_sync(registry.delete_model, name, force=force)
    return DeletedResponse(deleted=name)


# ----------------------------------------------------------------- versions


@router.get("/models/{name}/versions", response_model=list[VersionInfo])
async def list_versions(name: str, registry: RegistryDep) -> list[VersionInfo]:
    return await run_sync(registry.list_versions, name)


@router.post(
    "/models/{name}/versions",
    response_model=VersionInfo,
    status_code=201,
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "The model directory as tar / tar.gz / zip, or one file "
            "(with ?filename=model.onnx). Streamed to disk, never held in memory.",
            "content": {
                "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
                "application/gzip": {"schema": {"type": "string", "format": "binary"}},
                "application/zip": {"schema": {"type": "string", "format": "binary"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def upload_version(
    name: str,
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
    key: KeyDep,
    task: str | None = None,
    description: str = "",
    parent: str | None = None,
    filename: Annotated[str | None, Query(description="store the body as this one file")] = None,
    dequantize: Annotated[
        bool,
        Query(
            description="a GGUF file only: convert it to float32 safetensors (an hf version) "
            "instead of storing it quantized for llama.cpp"
        ),
    ] = False,
    params: Annotated[str | None, Query(description="JSON object")] = None,
    metrics: Annotated[str | None, Query(description="JSON object")] = None,
    tags: Annotated[str | None, Query(description="JSON object")] = None,
) -> VersionInfo:
    """Upload a new version; the body is streamed to a temp file under a size limit."""
    validate_model_name(name)
    limit = settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(
            f"upload of {declared} bytes exceeds the {limit} byte limit (MAAS_MAX_UPLOAD_BYTES)"
        )
    extra = {
        "params": _json_param(params, "params"),
        "metrics": _json_param(metrics, "metrics"),
        "tags": _json_param(tags, "tags"),
    }
    async with spooled_upload(
        request, settings, limit, "empty request body: send a tar or zip archive"
    ) as tmp:
        if dequantize:
            return await run_sync(
                import_dequantized_upload,
                registry,
                tmp,
                name,
                filename=filename,
                task=task,
                description=description,
                tags=extra["tags"],
                parent=parent,
                created_by=actor(key),
            )
        return await run_sync(
            registry.push_archive,
            tmp,
            name,
            filename=filename,
            content_type=request.headers.get("content-type"),
            task=task,
            description=description,
            parent=parent,
            created_by=actor(key),
            **extra,
        )


@router.get("/models/{name}/versions/{version}", response_model=VersionInfo)
async def get_version(
    name: str, version: str, registry: RegistryDep, files: bool = False
) -> VersionInfo:
    return await run_sync(registry.get_version, version_ref(name, version), with_files=files)


@router.patch("/models/{name}/versions/{version}", response_model=VersionInfo)
async def update_version(
    name: str, version: str, body: UpdateVersionRequest, registry: RegistryDep
) -> VersionInfo:
    return await run_sync(
        registry.update_version,
        version_ref(name, version),
        metrics=body.metrics,
        tags=body.tags,
        description=body.description,
    )


@router.get(
    "/models/{name}/versions/{version}/download",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-tar": {}}}},
)
async def download_version(name: str, version: str, registry: RegistryDep) -> StreamingResponse:
    """The version's files as a tar stream, digests verified while streaming."""
    info = await run_sync(registry.get_version, version_ref(name, version))
    chunks = await run_sync(registry.iter_version_tar, info.ref)
    return StreamingResponse(
        chunks,
        media_type="application/x-tar",
        headers={
            "Content-Disposition": f'attachment; filename="{info.model}-{info.version}.tar"',
            "X-Maas-Digest": info.digest,
        },
    )


@router.post("/models/{name}/versions/{version}/archive", response_model=VersionInfo)
async def archive_version(name: str, version: str, registry: RegistryDep) -> VersionInfo:
    return await run_sync(registry.archive_version, version_ref(name, version))


@router.post("/models/{name}/versions/{version}/restore", response_model=VersionInfo)
async def restore_version(name: str, version: str, registry: RegistryDep) -> VersionInfo:
    return await run_sync(registry.restore_version, version_ref(name, version))


@router.delete("/models/{name}/versions/{version}", response_model=DeletedResponse)
async def delete_version(name: str, version: str, registry: RegistryDep) -> DeletedResponse:
    info = await run_sync(registry.delete_version, version_ref(name, version))
    return DeletedResponse(deleted=info.ref)


# ------------------------------------------------------------------ aliases


@router.get("/models/{name}/aliases", response_model=list[AliasInfo])
async def list_aliases(name: str, registry: RegistryDep) -> list[AliasInfo]:
    aliases = await run_sync(registry.list_aliases, name)
    return [AliasInfo(model=name, alias=a, version=v) for a, v in aliases.items()]


@router.put("/models/{name}/aliases/{alias}", response_model=VersionInfo)
async def set_alias(
    name: str, alias: str, body: SetAliasRequest, registry: RegistryDep, key: KeyDep
) -> VersionInfo:
    return await run_sync(
        registry.set_alias, name, alias, body.version, actor=actor(key), reason=body.reason
    )


@router.delete("/models/{name}/aliases/{alias}", response_model=DeletedResponse)
async def delete_alias(
    name: str, alias: str, registry: RegistryDep, key: KeyDep
) -> DeletedResponse:
    await run_sync(registry.delete_alias, name, alias, actor=actor(key))
    return DeletedResponse(deleted=f"{name}@{alias}")


@router.get("/models/{name}/aliases/{alias}/history", response_model=list[AliasEvent])
async def alias_history(name: str, alias: str, registry: RegistryDep) -> list[AliasEvent]:
    return await run_sync(registry.alias_history, name, alias)


@router.get("/models/{name}/history", response_model=list[AliasEvent])
async def model_alias_history(name: str, registry: RegistryDep) -> list[AliasEvent]:
    return await run_sync(registry.alias_history, name)


@router.post("/models/{name}/aliases/{alias}/rollback", response_model=VersionInfo)
async def rollback_alias(name: str, alias: str, registry: RegistryDep, key: KeyDep) -> VersionInfo:
    return await run_sync(registry.rollback, name, alias, actor=actor(key))


# -------------------------------------------------------------- maintenance


@router.get("/resolve", response_model=VersionInfo)
async def resolve(ref: str, registry: RegistryDep, files: bool = False) -> VersionInfo:
    """Resolve ``name``, ``name:3`` or ``name@alias`` the way inference requests do."""
    return await run_sync(registry.resolve, ModelRef.parse(ref), with_files=files)


@router.post("/gc", response_model=GcResult)
async def gc(
    registry: RegistryDep,
    grace_seconds: Annotated[int | None, Query(ge=0)] = None,
) -> GcResult:
    return await run_sync(registry.gc, grace_seconds=grace_seconds)
