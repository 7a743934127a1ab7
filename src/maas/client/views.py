"""The JSON shapes of the answers the SDK returns as dicts (jobs, datasets, keys, audit...).

The server's own views of these (``JobInfo`` in ``maas.jobs.records``, ``KeyInfo`` in
``maas.security.keys``, ``AuditEntry`` in ``maas.security.audit`` ...) live beside the
code that owns them, which the SDK may not import: the SDK is installable and usable
without the server's stack (SQLAlchemy, torch). Copying them as pydantic models here would
validate twice and drift; a ``TypedDict`` costs nothing at run time, types the answer for
mypy and editors, and ``tests/client/test_views.py`` keeps each one's keys equal to the
fields of the server's view. Timestamps stay ISO 8601 strings, as on the wire. The
registry's answers are the registry's own pydantic views (``ModelInfo``, ``VersionInfo``),
which the SDK may import.
"""

from __future__ import annotations

from typing import Any, TypedDict


class JobDict(TypedDict):
    id: str
    kind: str
    status: str  # queued, running, succeeded, failed, cancelled
    spec: dict[str, Any]
    seed: int
    created_by: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    error: str | None
    pid: int | None
    result_ref: str | None
    progress: dict[str, Any] | None
    cancel_requested: bool


class DatasetDict(TypedDict):
    name: str
    version: int
    ref: str
    kind: str
    label_names: list[str]
    columns: list[str]
    slice_columns: list[str]
    splits: dict[str, int]
    seed: int
    preprocessing: dict[str, Any]
    source: dict[str, Any]
    digest: str
    size_bytes: int
    description: str
    aliases: list[str]
    created_at: str
    created_by: str | None


class GateDict(TypedDict):
    gate: str
    metric: str
    op: str
    threshold: float
    value: float
    passed: bool


class PromotionDict(TypedDict):
    model: str
    alias: str
    previous: int | None
    version: dict[str, Any]  # a VersionInfo as JSON
    gates: list[GateDict]


class KeyDict(TypedDict):
    id: int
    name: str
    prefix: str
    scopes: list[str]
    owner: str | None
    models: list[str]
    expires_at: str | None
    rpm_limit: int | None
    tpm_limit: int | None
    monthly_token_quota: int | None
    monthly_request_quota: int | None
    pii_policy: str | None
    created_at: str
    last_used_at: str | None
    revoked_at: str | None
    rotated_from: int | None


class CreatedKeyDict(TypedDict):
    key: str  # the secret: shown once, only its hash is stored
    info: KeyDict


class KeyPolicyDict(TypedDict, total=False):
    """A key's policy to create it with, or the fields to change (``None`` clears a limit)."""

    scopes: list[str]
    models: list[str]
    owner: str | None
    expires_at: Any  # a datetime (sent as ISO 8601) or an ISO 8601 string
    rpm_limit: int | None
    tpm_limit: int | None
    monthly_token_quota: int | None
    monthly_request_quota: int | None
    pii_policy: str | None


class UsageDict(TypedDict):
    object: str
    group_by: str
    data: list[dict[str, Any]]  # one row per group: requests, tokens, compute, energy


class AuditEntryDict(TypedDict):
    id: int
    ts: str
    actor: str
    action: str
    target: str
    source: str | None
    result: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


class VerifyReportDict(TypedDict):
    ok: bool
    checked: int
    first_bad_id: int | None
    reason: str
    head_id: int | None
    head_hash: str | None


class FeedbackDict(TypedDict):
    object: str
    prediction_id: str
    index: int
    model: str
    version: int
    label: str | None
    score: float | None
    predicted: str | None
    correct: bool | None


class FeedbackExportDict(TypedDict):
    rows: int
    dataset: DatasetDict


class MonitoringDict(TypedDict):
    model: str
    monitoring: bool
    window: int
    threshold: float
    feedback_window: int
    versions: list[dict[str, Any]]  # {"version", "drift": {...} | None, "feedback": {...} | None}
