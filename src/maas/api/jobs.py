"""``/admin/v1``: jobs (submit, follow, cancel, reports), datasets, promotion and lineage.

The job runner lives in ``app.state.jobs`` (started and closed by the app's
lifespan). Job progress streams as Server-Sent Events: one ``data:`` line per
event of the job's ``events.jsonl``, then an ``end`` event carrying the final
job, so ``curl -N .../events`` follows a job to its end.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
from maas.errors import InvalidRequestError, UnavailableError
from maas.jobs.base import JOB_KINDS, SELFTEST_KIND
from maas.jobs.datasets import (
    BUILTIN_SOURCES,
    DatasetInfo,
    DatasetOptions,
    get_dataset,
    import_dataset,
    list_datasets,
    preview_dataset,
)
from maas.jobs.gates import PromotionResult, lineage, promote
from maas.jobs.runner import JobInfo, JobRunner
from maas.registry.refs import model_name, validate_model_name
from maas.registry.schemas import VersionInfo

router = APIRouter(
    prefix="/admin/v1",
    tags=["jobs"],
    dependencies=[Depends(require_key)],
    route_class=JsonBodyRoute,
)

# Spec keys that name registry versions: the caller's model allowlist applies to them.
REF_KEYS = ("base", "model", "teacher", "student", "dataset", "output")
SSE_POLL_SECONDS = 0.25
SSE_KEEPALIVE_SECONDS = 15.0
MAX_SEED = 2**31 - 1


async def get_runner(request: Request) -> JobRunner:
    runner: JobRunner | None = getattr(request.app.state, "jobs", None)
    if runner is None:
        raise UnavailableError("the job runner is not running on this server")
    return runner


RunnerDep = Annotated[JobRunner, Depends(get_runner)]


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description=f"One of: {', '.join(JOB_KINDS)} (or {SELFTEST_KIND}).")
    spec: dict[str, Any] = Field(default_factory=dict, description="Kind-specific parameters.")
    seed: int = Field(default=0, ge=0, le=MAX_SEED)


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alias: str = "production"
    require: list[str] = Field(
        default_factory=list, description="Gates, e.g. ['accuracy>=0.9', 'latency_ms_bs1<=20']."
    )
    reason: str = ""


# --------------------------------------------------------------------- jobs


@router.post("/jobs", response_model=JobInfo, status_code=201)
async def create_job(
    body: JobRequest, runner: RunnerDep, key: KeyDep, admitted: AdmittedDep
) -> JobInfo:
    """Queue a job; it runs in a subprocess when a slot is free."""
    if body.kind not in (*JOB_KINDS, SELFTEST_KIND):
        raise InvalidRequestError(
            f"unknown job kind {body.kind!r}; expected one of: {', '.join(JOB_KINDS)}",
            param="kind",
        )
    for name in REF_KEYS:
        value = body.spec.get(name)
        if isinstance(value, str) and value:
            admitted.ensure_model(model_name(value))
    return await run_sync(
        runner.submit, body.kind, body.spec, seed=body.seed, created_by=actor(key)
    )


@router.get("/jobs", response_model=list[JobInfo])
async def list_jobs(
    runner: RunnerDep,
    status: str | None = None,
    kind: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[JobInfo]:
    """Jobs, newest first."""
    return await run_sync(runner.list_jobs, status=status, kind=kind, limit=limit)


@router.get("/jobs/{job_id}", response_model=JobInfo)
async def get_job(job_id: str, runner: RunnerDep) -> JobInfo:
    return await run_sync(runner.get, job_id)


@router.delete("/jobs/{job_id}", response_model=JobInfo)
async def cancel_job(job_id: str, runner: RunnerDep, settings: SettingsDep, key: KeyDep) -> JobInfo:
    """Cancel: a queued job at once; a running one gets SIGTERM, then SIGKILL after the grace.

    Answers once the job has ended (or, past the grace, with ``cancel_requested``).
    """
    info = await run_sync(runner.cancel, job_id, actor=actor(key))
    deadline = time.monotonic() + settings.job_cancel_grace_seconds + 3.0
    while not info.finished and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        info = await run_sync(runner.get, job_id)
    return info


async def _events(runner: JobRunner, job_id: str, after: int) -> AsyncIterator[bytes]:
    # A first byte at once: the request timeout only limits the wait for it.
    yield f": events of job {job_id}\n\n".encode()
    offset, index = 0, 0
    last_sent = time.monotonic()
    while True:
        # Status first, then events: once a finished status is seen, every event
        # the worker wrote is already in the file.
        info = await run_sync(runner.get, job_id)
        events, offset = await run_sync(runner.events, job_id, offset)
        for event in events:
            index += 1
            if index > after:
                yield f"id: {index}\ndata: {json.dumps(event)}\n\n".encode()
                last_sent = time.monotonic()
        if info.finished:
            # json.dumps escapes non-ASCII (U+2028 too, a line break to line-based readers).
            yield f"event: end\ndata: {json.dumps(info.model_dump(mode='json'))}\n\n".encode()
            return
        if time.monotonic() - last_sent > SSE_KEEPALIVE_SECONDS:
            yield b": keep-alive\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(SSE_POLL_SECONDS)


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def job_events(
    job_id: str,
    runner: RunnerDep,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Server-Sent Events: each progress event, then ``event: end`` with the final job."""
    await run_sync(runner.get, job_id)  # 404 before the stream starts
    after = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
    return StreamingResponse(
        _events(runner, job_id, after),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/jobs/{job_id}/log", response_class=PlainTextResponse)
async def job_log(job_id: str, runner: RunnerDep) -> PlainTextResponse:
    return PlainTextResponse(await run_sync(runner.log_text, job_id))


@router.get("/jobs/{job_id}/report", response_class=HTMLResponse)
async def job_report(job_id: str, runner: RunnerDep) -> HTMLResponse:
    """The job's self-contained HTML report."""
    path = await run_sync(runner.report_path, job_id, html=True)
    return HTMLResponse(await run_sync(path.read_text, encoding="utf-8"))


@router.get("/jobs/{job_id}/report.json")
async def job_report_json(job_id: str, runner: RunnerDep) -> JSONResponse:
    path = await run_sync(runner.report_path, job_id, html=False)
    text = await run_sync(path.read_text, encoding="utf-8")
    return JSONResponse(json.loads(text))


# ----------------------------------------------------------------- datasets


def _options(**fields: Any) -> DatasetOptions:
    given = {k: v for k, v in fields.items() if v is not None}
    try:
        return DatasetOptions(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = str(first["loc"][0]) if first["loc"] else None
        raise InvalidRequestError(f"invalid dataset options: {first['msg']}", param=param) from exc


def _csv_list(raw: str | None) -> list[str] | None:
    if raw is None:
        return None
    return [part.strip() for part in raw.split(",") if part.strip()]


@router.post(
    "/datasets",
    response_model=DatasetInfo,
    status_code=201,
    openapi_extra={
        "requestBody": {
            "required": False,
            "description": "The source file (CSV, JSONL, Parquet, or a tar/zip of an image "
            "folder), named by ?filename=; omit with ?source=sklearn:digits.",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def create_dataset(
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
    key: KeyDep,
    admitted: AdmittedDep,
    name: str,
    source: Annotated[str | None, Query(description="a built-in: sklearn:digits")] = None,
    filename: Annotated[str | None, Query(description="the uploaded file's name")] = None,
    description: str = "",
    text_column: str | None = None,
    label_column: str | None = None,
    label_map: Annotated[str | None, Query(description='JSON, e.g. {"0": "neg"}')] = None,
    dedup: bool | None = None,
    min_chars: int | None = None,
    max_chars: int | None = None,
    splits: Annotated[
        str | None, Query(description="train,validation,test e.g. 0.8,0.1,0.1")
    ] = None,
    seed: int | None = None,
    stratify: bool | None = None,
    slice_columns: Annotated[str | None, Query(description="comma-separated")] = None,
    max_records: int | None = None,
) -> DatasetInfo:
    """Import a dataset as the next version of ``name`` (stored like a model version)."""
    validate_model_name(name)
    admitted.ensure_model(name)
    mapping = None
    if label_map is not None:
        try:
            mapping = json.loads(label_map)
        except json.JSONDecodeError as exc:
            raise InvalidRequestError(f"label_map must be JSON: {exc}", param="label_map") from exc
    fractions = _csv_list(splits)
    options = _options(
        text_column=text_column,
        label_column=label_column,
        label_map=mapping,
        dedup=dedup,
        min_chars=min_chars,
        max_chars=max_chars,
        splits=fractions,
        seed=seed,
        stratify=stratify,
        slice_columns=_csv_list(slice_columns),
        max_records=max_records,
    )
    if source is not None:
        if source not in BUILTIN_SOURCES:
            raise InvalidRequestError(
                f"unknown source {source!r}: upload the file instead, or use one of "
                f"{', '.join(BUILTIN_SOURCES)}",
                param="source",
            )
        return await run_sync(
            import_dataset,
            registry,
            source,
            name,
            options=options,
            description=description,
            created_by=actor(key),
        )
    if not filename:
        raise InvalidRequestError(
            "name the uploaded file with ?filename= (its suffix selects the reader)",
            param="filename",
        )
    limit = settings.max_upload_bytes
    async with spooled_upload(
        request, settings, limit, "empty request body: send the dataset file"
    ) as tmp:
        return await run_sync(
            import_dataset,
            registry,
            tmp,
            name,
            options=options,
            filename=Path(filename).name,
            description=description,
            created_by=actor(key),
        )


@router.get("/datasets", response_model=list[DatasetInfo])
async def get_datasets(registry: RegistryDep, admitted: AdmittedDep) -> list[DatasetInfo]:
    """The newest version of every dataset this key may see."""
    found = await run_sync(list_datasets, registry)
    return [d for d in found if admitted.allows_model(d.name)]


@router.get("/datasets/{name}", response_model=DatasetInfo)
async def get_dataset_info(
    name: str, registry: RegistryDep, version: str | None = None
) -> DatasetInfo:
    """A dataset's newest version (or ``?version=3`` / ``?version=<alias>``)."""
    ref = version_ref(name, version) if version else name
    return await run_sync(get_dataset, registry, ref)


@router.get("/datasets/{name}/preview")
async def get_dataset_preview(
    name: str,
    registry: RegistryDep,
    version: str | None = None,
    split: str = "train",
    limit: Annotated[int, Query(ge=1, le=500)] = 20,
) -> dict[str, Any]:
    """The first ``limit`` records of a split (``train``, ``validation``, ``test``) of the
    dataset's newest version (or ``?version=``), as stored after preparation."""
    ref = version_ref(name, version) if version else name
    return await run_sync(preview_dataset, registry, ref, split, limit)


# ------------------------------------------------------ promotion, lineage


@router.post("/models/{name}/versions/{version}/promote", response_model=PromotionResult)
async def promote_version(
    name: str, version: str, body: PromoteRequest, registry: RegistryDep, key: KeyDep
) -> PromotionResult:
    """Move ``alias`` to this version only if every gate holds against its metrics (else 409)."""
    return await run_sync(
        promote,
        registry,
        version_ref(name, version),
        body.alias,
        body.require,
        actor=actor(key),
        reason=body.reason,
    )


@router.get("/models/{name}/versions/{version}/lineage", response_model=list[VersionInfo])
async def version_lineage(name: str, version: str, registry: RegistryDep) -> list[VersionInfo]:
    """The version, its parent, the parent's parent... (each with the job that made it)."""
    return await run_sync(lineage, registry, version_ref(name, version))
