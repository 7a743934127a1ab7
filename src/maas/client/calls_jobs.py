"""Descriptions of the lifecycle calls: jobs (and their events, logs, reports), datasets,
and promotion behind metric gates."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from maas.client.calls import (
    ADMIN,
    Call,
    EventHandler,
    Plan,
    Upload,
    endpoint,
    perform,
    query,
    read_text,
    segment,
)
from maas.client.calls_registry import version_path
from maas.client.views import DatasetDict, JobDict, PromotionDict
from maas.errors import InvalidRequestError
from maas.registry.refs import ModelRef


def _job_path(job_id: str) -> str:
    return f"{ADMIN}/jobs/{segment(job_id)}"


@endpoint
def submit_job(kind: str, spec: dict[str, Any], *, seed: int = 0) -> Call[JobDict]:
    """Queue a job (``train``, ``evaluate``, ``quantize``...); a server slot runs it."""
    return Call("POST", f"{ADMIN}/jobs", json={"kind": kind, "spec": spec, "seed": seed})


@endpoint
def get_job(job_id: str) -> Call[JobDict]:
    return Call("GET", _job_path(job_id))


@endpoint
def list_jobs(
    *, status: str | None = None, kind: str | None = None, limit: int = 100
) -> Call[list[JobDict]]:
    """Jobs, newest first."""
    return Call("GET", f"{ADMIN}/jobs", params=query(status=status, kind=kind, limit=limit))


@endpoint
def cancel_job(job_id: str) -> Call[JobDict]:
    """Cancel; answers once the job has ended (or, past the grace, ``cancel_requested``)."""
    return Call("DELETE", _job_path(job_id))


@endpoint
def job_log(job_id: str) -> Call[str]:
    """The job's log (and the worker's stderr, if it wrote any)."""
    return Call("GET", f"{_job_path(job_id)}/log", parse=read_text)


@endpoint
def job_report(job_id: str) -> Call[dict[str, Any]]:
    """The job's report as JSON (its ``metrics`` ...); ``NotFoundError`` before there is one."""
    return Call("GET", f"{_job_path(job_id)}/report.json")


@endpoint
def job_report_html(job_id: str) -> Call[str]:
    """The job's self-contained HTML report."""
    return Call("GET", f"{_job_path(job_id)}/report", parse=read_text)


def _ignore_event(event: dict[str, Any]) -> None:
    return None


@endpoint
def follow_job(job_id: str, on_event: EventHandler | None = None) -> Plan[JobDict]:
    """Read the job's event stream to its end; each progress event goes to ``on_event``.

    Returns the finished job (or, if the stream broke off, where the job stands).
    """
    path = f"{_job_path(job_id)}/events"
    end: JobDict | None = yield Call("GET", path, events=on_event or _ignore_event)
    if end is None:
        end = yield from perform(get_job.describe(job_id))
    return end


# ----------------------------------------------------------------- datasets


@endpoint
def add_dataset(
    source: Path | str,
    name: str,
    *,
    description: str = "",
    text_column: str | None = None,
    label_column: str | None = None,
    label_map: Mapping[str, Any] | None = None,
    dedup: bool | None = None,
    min_chars: int | None = None,
    max_chars: int | None = None,
    splits: Sequence[float] | None = None,
    seed: int | None = None,
    stratify: bool | None = None,
    slice_columns: Sequence[str] | None = None,
    max_records: int | None = None,
) -> Call[DatasetDict]:
    """Import the next version of dataset ``name``.

    ``source`` is a file to upload (a ``Path``: CSV, JSONL, Parquet, or a tar/zip of an
    image folder) or the name of a source the server has built in (a ``str``, such as
    ``"sklearn:digits"``). Options left ``None`` take the server's defaults.
    """
    params = query(
        name=name,
        description=description,
        text_column=text_column,
        label_column=label_column,
        label_map=None if label_map is None else json.dumps(dict(label_map)),
        dedup=dedup,
        min_chars=min_chars,
        max_chars=max_chars,
        splits=None if splits is None else ",".join(str(f) for f in splits),
        seed=seed,
        stratify=stratify,
        slice_columns=",".join(slice_columns) if slice_columns else None,
        max_records=max_records,
    )
    if isinstance(source, str):
        return Call("POST", f"{ADMIN}/datasets", params={**params, "source": source})
    if source.is_dir():
        raise InvalidRequestError(
            "to upload an image folder, pack it first: tar -cf images.tar -C DIR .",
            param="source",
        )
    params["filename"] = source.name
    return Call("POST", f"{ADMIN}/datasets", params=params, upload=Upload(source), timeout=None)


@endpoint
def list_datasets() -> Call[list[DatasetDict]]:
    """The newest version of every dataset this key may see."""
    return Call("GET", f"{ADMIN}/datasets")


@endpoint
def get_dataset(ref: str) -> Call[DatasetDict]:
    """A dataset version: ``name`` (the newest), ``name:3`` or ``name@alias``."""
    parsed = ModelRef.parse(ref)
    selector = parsed.version if parsed.version is not None else parsed.alias
    path = f"{ADMIN}/datasets/{segment(parsed.name)}"
    return Call("GET", path, params=query(version=selector))


@endpoint
def preview_dataset(ref: str, split: str = "train", limit: int = 20) -> Call[dict[str, Any]]:
    """The first ``limit`` records of a split of a dataset version, as stored: ``dataset``,
    ``split``, ``columns``, ``rows``, ``total``."""
    parsed = ModelRef.parse(ref)
    selector = parsed.version if parsed.version is not None else parsed.alias
    path = f"{ADMIN}/datasets/{segment(parsed.name)}/preview"
    return Call("GET", path, params=query(version=selector, split=split, limit=limit))


# ---------------------------------------------------------------- promotion


@endpoint
def promote(
    ref: str, alias: str = "production", require: Sequence[str] = (), *, reason: str = ""
) -> Call[PromotionDict]:
    """Move ``alias`` to ``ref`` only if every gate (``"accuracy>=0.9"``) holds against its
    metrics; otherwise ``ConflictError`` naming the failing gates, and the alias stays."""
    body = {"alias": alias, "require": list(require), "reason": reason}
    return Call("POST", version_path(ref) + "/promote", json=body)
