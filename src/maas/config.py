"""Settings: the one place maas reads the environment.

Build one :class:`Settings` at the edge (``create_app`` or the CLI) and pass it
down; nothing else in the package touches ``os.environ``.

This module is longer than our ~400-line guide on purpose: it is the one settings
object the architecture asks for, one flat field list whose descriptions are the
documentation of every ``MAAS_*`` variable (tests/test_config.py holds
docs/configuration.md to it). Splitting it by subsystem would make several
settings objects, or one object spread over modules that each need the others.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import string
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

GIB = 1024**3


class Settings(BaseSettings):
    """Every knob of maas, read from ``MAAS_*`` environment variables."""

    # hide_input_in_errors: a mistyped MAAS_MASTER_KEY must not be echoed in error messages.
    model_config = SettingsConfigDict(
        env_prefix="MAAS_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    home: Path = Field(
        default=Path("~/.maas"),
        description="Directory holding all state: database, blobs, jobs, keys.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the registry database; default: SQLite file in MAAS_HOME.",
    )
    host: str = Field(default="127.0.0.1", description="Address the server binds to.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port the server binds to.")
    auth: bool = Field(
        default=True,
        description="The trust layer: API keys, scopes, rate limits, quotas and usage metering. "
        "MAAS_AUTH=off serves every request without a key and meters nothing; it is for "
        "benchmarks and local experiments, and is refused unless the server binds to a "
        "loopback address.",
    )
    workers: int = Field(
        default=0,
        ge=0,
        description="HTTP worker processes of `maas serve`; 0 = one per CPU core. With more "
        "than one, the loaded models live in one engine process that every worker shares "
        "(weights once per machine).",
    )
    engine_address: str | None = Field(
        default=None,
        description="Set by `maas serve --workers N` for its workers: the engine process's "
        "Unix socket path. Unset: models are loaded in the serving process itself.",
    )
    ray_address: str | None = Field(
        default=None,
        description="`maas serve --ray`: run each loaded version as Ray Serve replicas on "
        "this cluster: `auto` (the cluster running on this machine, or RAY_ADDRESS), `local` "
        "(start a private one in this process) or an address (host:6379). Unset: models run "
        "in this machine's engine (docs/ray.md).",
    )
    ray_max_ongoing_requests: int = Field(
        default=64,
        ge=1,
        description="Ray mode: requests one replica holds at once (Ray routes the rest to other "
        "replicas or queues them); a replica batches what it holds.",
    )
    ray_autoscaling: dict[str, float] = Field(
        default_factory=dict,
        description="Ray mode: Ray Serve autoscaling fields added to every autoscaled "
        "version's settings (JSON), e.g. "
        '\'{"upscale_delay_s": 5, "downscale_delay_s": 120, "look_back_period_s": 10}\'.',
    )
    max_upload_bytes: int = Field(
        default=20 * GIB,
        gt=0,
        description="Largest accepted upload, both as sent and once extracted.",
    )
    allow_unsafe_formats: bool = Field(
        default=False,
        description="Accept pickle-based weights (.bin, .pt, .pth, .pkl, .ckpt). Unsafe.",
    )
    gc_grace_seconds: int = Field(
        default=3600,
        ge=0,
        description="Unreferenced blobs younger than this are kept by gc (pushes in flight).",
    )
    url: str | None = Field(
        default=None,
        description="CLI only: talk to this server instead of the local registry.",
    )
    api_key: str | None = Field(
        default=None, description="CLI only: the key sent to the server given by MAAS_URL."
    )
    log_level: str = Field(default="info", description="Server log level.")
    access_log: bool = Field(
        default=False,
        description="uvicorn's one line per HTTP request. Off by default: it costs about "
        "0.1 ms per request (measured); management requests are in the audit log and "
        "inference requests in the usage table either way.",
    )
    memory_budget_bytes: int = Field(
        default=8 * GIB,
        gt=0,
        description="Loaded models share this budget; the least recently used idle model "
        "is unloaded to make room.",
    )
    compute_threads: int = Field(
        default=2,
        ge=1,
        description="Threads that run model compute off the event loop (batches in parallel).",
    )
    torch_threads: int = Field(
        default=0,
        ge=0,
        description="torch / ONNX Runtime intra-op threads per forward pass; 0 = auto: torch "
        "forwards follow load (a lone batch uses every core, concurrent batches split them, "
        "docs/batching.md); ONNX Runtime sessions get the cores divided among the compute "
        "threads. A number fixes every forward's threads.",
    )
    max_request_bytes: int = Field(
        default=64 * 1024**2,
        gt=0,
        description="Largest inference request body (V2 tensors, JSON bodies).",
    )
    max_audio_bytes: int = Field(
        default=25 * 1024**2,
        gt=0,
        description="Largest audio file /v1/audio/transcriptions and /translations accept "
        "(413 beyond; OpenAI's own limit is 25 MB).",
    )
    max_audio_seconds: float = Field(
        default=1800.0,
        gt=0,
        description="Longest audio a transcription decodes (400 beyond); longer than 30 s "
        "is cut into overlapping windows.",
    )
    max_speech_input_chars: int = Field(
        default=4096,
        gt=0,
        description="Longest text /v1/audio/speech speaks (413 beyond).",
    )
    images_per_minute: int = Field(
        default=0,
        ge=0,
        description="Images each key may have made per minute by /v1/images/generations "
        "(429 beyond); 0 = no limit beyond the key's requests per minute.",
    )
    max_image_pixels: int = Field(
        default=512 * 512,
        gt=0,
        description="Largest width x height /v1/images/generations makes (413 beyond). "
        "A UNet's self-attention memory grows with the square of the latent pixels: "
        "Stable Diffusion 1.5 at 1024 x 1024 needs gigabytes per image for one layer.",
    )
    request_timeout_seconds: float = Field(
        default=300.0,
        ge=0,
        description="Longest wait for the first byte of a response (504 after); 0 = none. "
        "Uploads and downloads are exempt; streams are limited only until they start.",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis for rate limits and monthly quotas shared by every server process "
        "and instance (redis://host:6379/0); default: kept in process memory.",
    )
    redis_namespace: str = Field(
        default="maas",
        min_length=1,
        max_length=64,
        description="Prefix of every Redis key maas writes; give each maas deployment that "
        "shares one Redis its own.",
    )
    drain_seconds: float = Field(
        default=30.0,
        ge=0,
        description="On SIGTERM, how long in-flight requests and streams may take to finish "
        "before they are cut off and the server exits.",
    )
    warm_timeout_seconds: float = Field(
        default=60.0,
        ge=0,
        description="When an alias moves to a version this server has not loaded while the "
        "old one is loaded, how long requests keep going to the old one while the new one "
        "loads (then they switch, and wait for the load); 0 = switch at once.",
    )
    energy_watts: float = Field(
        default=35.0,
        ge=0,
        description="Watts attributed to one busy compute slot; usage energy estimates are "
        "compute seconds x this figure (an estimate, not a measurement).",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed to call the API from a browser (JSON list); "
        "empty = CORS off. Example: MAAS_CORS_ORIGINS='[\"https://console.example\"]'.",
    )
    max_running_sequences: int = Field(
        default=32,
        ge=1,
        description="Generation: sequences decoded together in one continuous batch.",
    )
    max_queued_requests: int = Field(
        default=64,
        ge=0,
        description="Generation: requests waiting beyond the running ones; past it, 429.",
    )
    kv_cache_tokens: int = Field(
        default=16384,
        ge=256,
        description="Generation: tokens the paged KV cache holds per model (shared by all "
        "running sequences).",
    )
    flash_attention: bool = Field(
        default=True,
        description="Generation on GGUF models (llama.cpp): flash attention. On, each token "
        "attends to its own sequence's cells of the shared KV cache only (off, to every used "
        "cell, masked: 58% of a 32-stream step measured); its half-precision sums make greedy "
        "tokens depend slightly on what else runs. Off: batched greedy output equals "
        "llama.cpp's one-sequence output for batch-invariant quantizations (Q8_0).",
    )
    max_batch_size: int = Field(default=32, ge=1, description="Default adaptive batch size cap.")
    max_wait_ms: float = Field(
        default=2.0,
        ge=0,
        description="Default longest wait for a batch to fill once its first item arrived.",
    )
    monitoring: bool = Field(
        default=True,
        description="Drift monitoring of what is served (docs/monitoring.md): each served "
        "version's inputs and outputs are compared with a reference off the request path.",
    )
    monitoring_window: int = Field(
        default=500,
        ge=20,
        description="Drift monitoring: items per window (the reference and the current "
        "window each hold this many); a drift is detected within about one window.",
    )
    monitoring_interval_seconds: float = Field(
        default=30.0,
        ge=0,
        description="Drift monitoring: shortest time between two analyses of one version "
        "(an analysis also waits for a quarter of a window of new items); bounds the "
        "background CPU under heavy traffic.",
    )
    monitoring_alpha: float = Field(
        default=0.001,
        gt=0,
        lt=1,
        description="Drift monitoring: a feature is drifting when its test's p-value is below "
        "this threshold.",
    )
    alert_webhook_url: str | None = Field(
        default=None,
        description="Drift alerts: URL that receives a signed JSON POST when a version starts "
        "drifting and when it stops; unset = no webhook (the alerts are in /metrics).",
    )
    alert_webhook_secret: SecretStr | None = Field(
        default=None,
        description="Drift alerts: key of the HMAC-SHA256 signature sent in the "
        "X-Maas-Signature header (over timestamp.body).",
    )
    alert_webhook_attempts: int = Field(
        default=6,
        ge=1,
        description="Drift alerts: tries per alert (back-off doubling from 0.5 s).",
    )
    feedback: bool = Field(
        default=True,
        description="Record classification and generation predictions so that "
        "POST /v1/feedback can attach a label or score to them.",
    )
    feedback_capture_inputs: bool = Field(
        default=False,
        description="Store the (PII-redacted) input text of every recorded prediction, which "
        "feedback export needs; off = only for models tagged feedback_capture=true.",
    )
    feedback_window: int = Field(
        default=500,
        ge=1,
        description="Live accuracy: the newest labelled predictions of a version it counts.",
    )
    master_key: SecretStr | None = Field(
        default=None,
        description="Master key for encryption at rest: 32 bytes, base64 or hex. When set "
        "(or MAAS_MASTER_KEY_FILE), new blobs are stored encrypted.",
    )
    master_key_file: Path | None = Field(
        default=None,
        description="File holding the master key (base64 or hex of 32 bytes); "
        "an alternative to MAAS_MASTER_KEY.",
    )

    artifact_url: str | None = Field(
        default=None,
        description="Where blobs are stored: unset = the directory MAAS_HOME/blobs; "
        "s3://bucket/prefix = an S3-compatible bucket (install the s3 extra); "
        "file:///path = another local directory.",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="S3 API endpoint for s3:// stores that are not AWS (MinIO, Ceph, ...), "
        "e.g. http://minio:9000; unset = AWS for the region.",
    )
    s3_region: str | None = Field(
        default=None, description="S3 region; unset = boto3's own (AWS_REGION, ~/.aws/config)."
    )
    s3_access_key_id: str | None = Field(
        default=None,
        description="S3 access key id; unset = boto3's credential chain (AWS_ACCESS_KEY_ID, "
        "~/.aws/credentials, instance roles).",
    )
    s3_secret_access_key: SecretStr | None = Field(
        default=None, description="S3 secret key, with MAAS_S3_ACCESS_KEY_ID."
    )
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        default="auto",
        description="How bucket names go into S3 URLs: path (http://host/bucket/key, what "
        "most self-hosted servers want), virtual (http://bucket.host/key) or auto.",
    )
    s3_part_bytes: int = Field(
        default=64 * 1024**2,
        ge=5 * 1024**2,
        description="Files at least this big are uploaded in parts of this size, in "
        "parallel (S3 multipart upload; at least 5 MiB).",
    )
    cache_max_bytes: int | None = Field(
        default=None,
        gt=0,
        description="Bound on MAAS_HOME/cache, the materialized versions models load from; "
        "least recently used versions are removed past it. Unset = unbounded.",
    )

    max_concurrent_jobs: int = Field(
        default=1,
        ge=1,
        description="Jobs (train, evaluate, ...) running at once; the rest wait queued (FIFO).",
    )
    job_cancel_grace_seconds: float = Field(
        default=10.0,
        ge=0,
        description="After SIGTERM, how long a cancelled job may take to stop before SIGKILL.",
    )

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("master_key", mode="after")
    @classmethod
    def _check_master_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            decode_master_key(value.get_secret_value(), source="MAAS_MASTER_KEY")
        return value

    @field_validator("master_key_file", mode="after")
    @classmethod
    def _check_master_key_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            value = value.expanduser().resolve()
            _read_master_key_file(value)
        return value

    @field_validator("artifact_url", mode="after")
    @classmethod
    def _check_artifact_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if value.startswith("s3://"):
            if not value.removeprefix("s3://").partition("/")[0]:
                raise ValueError("MAAS_ARTIFACT_URL must name a bucket: s3://bucket/prefix")
            return value
        if value.startswith("file://") and value.removeprefix("file://").startswith("/"):
            return value
        raise ValueError("MAAS_ARTIFACT_URL must be s3://bucket/prefix or file:///absolute/path")

    @model_validator(mode="after")
    def _s3_credentials_in_pairs(self) -> Settings:
        if (self.s3_access_key_id is None) != (self.s3_secret_access_key is None):
            raise ValueError(
                "set both MAAS_S3_ACCESS_KEY_ID and MAAS_S3_SECRET_ACCESS_KEY, or neither"
            )
        return self

    @model_validator(mode="after")
    def _auth_off_only_on_loopback(self) -> Settings:
        self.check_auth_bind()
        return self

    def check_auth_bind(self) -> None:
        """Refuse the trust layer off on anything but a loopback bind (a ValueError)."""
        if not self.auth and not is_loopback(self.host):
            raise ValueError(
                f"MAAS_AUTH=off serves every request without a key; it is allowed only on a "
                f"loopback address (127.0.0.1, ::1, localhost), not on {self.host!r}"
            )

    @model_validator(mode="after")
    def _one_master_key_source(self) -> Settings:
        if self.master_key is not None and self.master_key_file is not None:
            raise ValueError("set MAAS_MASTER_KEY or MAAS_MASTER_KEY_FILE, not both")
        return self

    @property
    def master_key_bytes(self) -> bytes | None:
        """The 32-byte master key for encryption at rest, or None: blobs stay plaintext."""
        if self.master_key is not None:
            return decode_master_key(self.master_key.get_secret_value(), source="MAAS_MASTER_KEY")
        if self.master_key_file is not None:
            return _read_master_key_file(self.master_key_file)
        return None

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'maas.db'}"

    @property
    def effective_torch_threads(self) -> int:
        """Intra-op threads per forward: the setting, or cores / compute threads."""
        if self.torch_threads:
            return self.torch_threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        return max(1, cores // self.compute_threads)

    @property
    def effective_workers(self) -> int:
        """HTTP worker processes: the setting, or one per core the process may run on."""
        if self.workers:
            return self.workers
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1

    @property
    def blobs_dir(self) -> Path:
        return self.home / "blobs"

    @property
    def tmp_dir(self) -> Path:
        return self.home / "tmp"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def admin_key_file(self) -> Path:
        return self.home / "admin.key"

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    def to_env(self) -> dict[str, str]:
        """Every setting as the ``MAAS_*`` variable that gives it (for child processes).

        Settings changed in code (CLI options) reach a child this way, not only the
        ones its parent read from its own environment.
        """
        env: dict[str, str] = {}
        for name, value in self:
            if value is None:
                continue
            if isinstance(value, SecretStr):
                text = value.get_secret_value()
            elif isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, list | dict):
                text = json.dumps(value)
            else:
                text = str(value)
            env[f"MAAS_{name.upper()}"] = text
        return env

    def export_for_workers(self, engine_address: str) -> dict[str, str]:
        """Put every setting, and the engine's address, into this process's environment.

        ``maas serve --workers N``: uvicorn's worker processes inherit the
        environment and build their own ``Settings`` from it. Returns the
        environment, for the engine process.
        """
        os.environ.update(self.to_env())
        os.environ["MAAS_ENGINE_ADDRESS"] = engine_address
        return dict(os.environ)

    def child_env(self) -> dict[str, str]:
        """The environment for a maas subprocess (a job worker) that must see these settings.

        The parent's environment plus the settings a worker needs to open the
        same registry, even when they were given in code rather than by variables.
        """
        env = dict(os.environ)
        env["MAAS_HOME"] = str(self.home)
        env["MAAS_ALLOW_UNSAFE_FORMATS"] = "true" if self.allow_unsafe_formats else "false"
        env["MAAS_TORCH_THREADS"] = str(self.torch_threads)
        if self.database_url:
            env["MAAS_DATABASE_URL"] = self.database_url
        # The same artifact store: a job's versions must land where the server reads.
        for name in _STORE_SETTINGS:
            value = getattr(self, name)
            if value is not None:
                text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
                env[f"MAAS_{name.upper()}"] = text
        if self.master_key is not None:
            env["MAAS_MASTER_KEY"] = self.master_key.get_secret_value()
            env.pop("MAAS_MASTER_KEY_FILE", None)
        elif self.master_key_file is not None:
            env["MAAS_MASTER_KEY_FILE"] = str(self.master_key_file)
            env.pop("MAAS_MASTER_KEY", None)
        return env


MASTER_KEY_BYTES = 32
_STORE_SETTINGS = (
    "artifact_url",
    "s3_endpoint_url",
    "s3_region",
    "s3_access_key_id",
    "s3_secret_access_key",
    "s3_addressing_style",
    "s3_part_bytes",
    "cache_max_bytes",
)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def decode_master_key(text: str, *, source: str = "master key") -> bytes:
    """Decode a master key written as hex (64 digits) or base64 (standard or URL-safe).

    Raises ValueError naming ``source``, never echoing the text.
    """
    text = text.strip()
    if len(text) == 2 * MASTER_KEY_BYTES and all(c in string.hexdigits for c in text):
        return bytes.fromhex(text)
    try:
        key = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except binascii.Error:
        key = b""
    if len(key) != MASTER_KEY_BYTES:
        raise ValueError(
            f"{source} must be {MASTER_KEY_BYTES} random bytes written as 64 hex digits or "
            f"base64 (e.g. the output of `openssl rand -base64 {MASTER_KEY_BYTES}`)"
        )
    return key


def _read_master_key_file(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="ascii")
    except OSError as exc:
        raise ValueError(f"cannot read MAAS_MASTER_KEY_FILE {path}: {exc.strerror}") from exc
    except UnicodeDecodeError:
        # Not echoing exc: its message quotes a byte of the file.
        raise ValueError(f"MAAS_MASTER_KEY_FILE {path} is not ASCII text") from None
    return decode_master_key(text, source=f"MAAS_MASTER_KEY_FILE {path}")
