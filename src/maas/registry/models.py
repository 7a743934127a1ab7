"""ORM tables of the registry (SQLAlchemy 2 declarative).

The schema itself is owned by the Alembic migrations in ``migrations/``; these
classes must match them, which ``tests/registry/test_migrations.py`` checks.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class ModelRow(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    task: Mapped[str] = mapped_column(String(32))
    owner: Mapped[str | None] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Highest version number ever handed out; numbers are never reused, even
    # after a delete, so ``name:3`` always meant one artifact.
    last_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    versions: Mapped[list[VersionRow]] = relationship(
        back_populates="model", cascade="all, delete-orphan", passive_deletes=True
    )


class VersionRow(Base):
    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("model_id", "number", name="uq_versions_model_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(32))
    digest: Mapped[str] = mapped_column(String(71))  # "sha256:" + 64 hex
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="ready")
    description: Mapped[str] = mapped_column(Text, default="")
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    tags: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("versions.id", ondelete="SET NULL"), nullable=True
    )
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(128), nullable=True)

    model: Mapped[ModelRow] = relationship(back_populates="versions")
    files: Mapped[list[VersionFileRow]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="VersionFileRow.path"
    )
    parent: Mapped[VersionRow | None] = relationship(remote_side=[id])


class VersionFileRow(Base):
    """One file of a version's manifest; also the reference that keeps a blob alive."""

    __tablename__ = "version_files"

    version_id: Mapped[int] = mapped_column(
        ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True
    )
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)


class AliasRow(Base):
    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("model_id", "name", name="uq_aliases_model_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="RESTRICT"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(128), nullable=True)

    version: Mapped[VersionRow] = relationship()


class AliasEventRow(Base):
    """Append-only history of alias moves; version *numbers* so it outlives deletes."""

    __tablename__ = "alias_events"
    __table_args__ = (Index("ix_alias_events_model_alias", "model_id", "alias"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(String(64))
    from_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    to_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    actor: Mapped[str | None] = mapped_column(String(128), nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    # First characters of the plaintext, safe to show, so users can tell keys apart.
    prefix: Mapped[str] = mapped_column(String(24))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # Model names or fnmatch globs this key may use; empty = every model.
    models: Mapped[list[Any]] = mapped_column(JSON, default=list)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    rpm_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    monthly_token_quota: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    monthly_request_quota: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    pii_policy: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # The key this one replaced by rotation, for the audit trail.
    rotated_from: Mapped[int | None] = mapped_column(Integer, nullable=True)


class UsageRow(Base):
    """One served request, for metering (written in batches off the request path)."""

    __tablename__ = "usage_records"
    __table_args__ = (
        Index("ix_usage_key_ts", "key_id", "ts"),
        Index("ix_usage_model_ts", "model", "ts"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    model: Mapped[str] = mapped_column(String(64))
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    route: Mapped[str] = mapped_column(String(32))
    status: Mapped[int] = mapped_column(Integer)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    items: Mapped[int] = mapped_column(Integer, default=0)
    compute_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    queue_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    bytes_in: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_out: Mapped[int] = mapped_column(BigInteger, default=0)
    energy_joules: Mapped[float] = mapped_column(Float, default=0.0)
    audio_seconds: Mapped[float] = mapped_column(Float, default=0.0)  # heard or spoken
    images: Mapped[int] = mapped_column(Integer, default=0)  # generated


class AuditRow(Base):
    """Append-only management log; each entry hashes the previous one (a chain)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(160))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(256))
    source: Mapped[str | None] = mapped_column(String(64), nullable=True)
    result: Mapped[str] = mapped_column(String(32))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class JobRow(Base):
    """One job (train, evaluate, ...): its state machine, who runs it, what it made.

    ``status``: queued -> running -> succeeded | failed | cancelled. ``runner``
    (``host:pid`` of the process that started the worker) and ``heartbeat_at``
    let a restarted server tell its own leftovers (orphans) from jobs another
    live runner is still following.
    """

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_created", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # uuid4 hex
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[str | None] = mapped_column(String(160), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    runner: Mapped[str | None] = mapped_column(String(160), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    cancelled_by: Mapped[str | None] = mapped_column(String(160), nullable=True)
    result_ref: Mapped[str | None] = mapped_column(String(128), nullable=True)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class ChangeEpochRow(Base):
    """A counter bumped in the same transaction as a change that caches depend on.

    Every process sharing the database polls the few rows of this table (one
    cheap query, a few times a second) and drops the matching cache when a
    counter moved: ``keys`` for API keys (revocation, policy changes).
    """

    __tablename__ = "change_epochs"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class StoreFlagRow(Base):
    """A fact about the artifact store that every process must honour, whatever its settings.

    ``encryption``: the store holds encrypted blobs, so a process without the
    master key must not write plaintext ones into it (``value``: the id of the
    master key that marked it, for messages; ``maas.registry.blobmarker``).
    """

    __tablename__ = "store_flags"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str] = mapped_column(String(128))
    set_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DeploymentRow(Base):
    """How one version is served (``maas.registry.deployments``); no row: the defaults.

    ``loaded``: True = loaded on every instance, False = unloaded everywhere,
    None = on demand. The replica fields are for Ray Serve mode. Deleting the
    version deletes its row (ON DELETE CASCADE).
    """

    __tablename__ = "deployments"

    version_id: Mapped[int] = mapped_column(
        ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True
    )
    loaded: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    pinned: Mapped[bool] = mapped_column(Boolean, default=False)
    replicas: Mapped[int | None] = mapped_column(Integer, nullable=True)
    min_replicas: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_replicas: Mapped[int | None] = mapped_column(Integer, nullable=True)
    target_ongoing_requests: Mapped[float | None] = mapped_column(Float, nullable=True)
    num_cpus: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(160), nullable=True)


class PredictionRow(Base):
    """One prediction that may receive feedback (``maas.registry.feedback``).

    Written in batches off the request path; ``feedback_*`` are filled later by
    ``POST /v1/feedback``. ``item`` tells apart the predictions of one request
    (the texts of a V2 request, the ``n`` choices of a completion). ``input_text``
    is kept only when capture is on for the model, after the PII policy.
    """

    __tablename__ = "predictions"
    __table_args__ = (
        Index("ix_predictions_model_version_feedback", "model", "version", "feedback_at"),
    )

    prediction_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    item: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    task: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    output_label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    output_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    input_text: Mapped[str | None] = mapped_column(Text, nullable=True)
    feedback_label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    feedback_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    feedback_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    feedback_key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class RoutingPolicyRow(Base):
    """A model's routing policy (``maas.registry.routing``) as JSON; no row: no policy.

    Deleting the model deletes it (ON DELETE CASCADE).
    """

    __tablename__ = "routing_policies"

    model_id: Mapped[int] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    policy: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(160), nullable=True)


class RoutingEventRow(Base):
    """One change of a model's routing policy: the policy set (JSON), or None when cleared."""

    __tablename__ = "routing_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    policy: Mapped[str | None] = mapped_column(Text, nullable=True)
    actor: Mapped[str | None] = mapped_column(String(160), nullable=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RolloutRow(Base):
    """A canary rollout of one candidate version (``maas.registry.rollouts``).

    ``active_model_id`` equals ``model_id`` while the rollout runs and is NULL once
    it ended; its unique constraint is what allows one running rollout per model,
    even when two instances start one at the same moment.
    """

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    active_model_id: Mapped[int | None] = mapped_column(Integer, nullable=True, unique=True)
    candidate: Mapped[int] = mapped_column(Integer)
    baseline: Mapped[int] = mapped_column(Integer)
    plan: Mapped[str] = mapped_column(Text)  # JSON: steps, step_seconds, criteria
    state: Mapped[str] = mapped_column(String(16))
    step: Mapped[int] = mapped_column(Integer, default=0)
    step_started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    prior_policy: Mapped[str | None] = mapped_column(Text, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    origin: Mapped[str | None] = mapped_column(String(160), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(160), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class RolloutEventRow(Base):
    """One decision of a rollout (start, advance, promote, rollback, cancel) and its figures."""

    __tablename__ = "rollout_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rollout_id: Mapped[int] = mapped_column(
        ForeignKey("rollouts.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    action: Mapped[str] = mapped_column(String(16))
    step: Mapped[int] = mapped_column(Integer)
    percent: Mapped[int] = mapped_column(Integer)
    figures: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON
    reason: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str | None] = mapped_column(String(160), nullable=True)


class ScheduleRow(Base):
    """A schedule that runs a retraining pipeline (``maas.jobs.schedules``).

    ``next_run_at`` is the compare-and-set token: the instance that moves it past a due
    time is the one that starts that run, so a run happens once however many instances
    share the database.
    """

    __tablename__ = "schedules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    cron: Mapped[str] = mapped_column(String(120))
    timezone: Mapped[str] = mapped_column(String(64))
    pipeline: Mapped[str] = mapped_column(Text)  # JSON: the pipeline job's spec
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    next_run_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    last_note: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(160), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ShadowComparisonRow(Base):
    """One mirrored request's items compared with the caller's answer (``serving.shadow``):
    the agreement figure of a rollout (``maas.registry.rollout_figures``)."""

    __tablename__ = "shadow_comparisons"
    __table_args__ = (Index("ix_shadow_comparisons_model_version_ts", "model", "version", "ts"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    model: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    baseline: Mapped[int] = mapped_column(Integer)
    agreed: Mapped[int] = mapped_column(Integer)
    compared: Mapped[int] = mapped_column(Integer)
