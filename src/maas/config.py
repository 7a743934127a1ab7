"""Settings: the one place maas reads the environment.

Build one :class:`Settings` at the edge (``create_app`` or the CLI) and pass it
down; nothing else in the package touches ``os.environ``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

GIB = 1024**3


class Settings(BaseSettings):
    """Every knob of maas, read from ``MAAS_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="MAAS_", extra="ignore", frozen=True)

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
        description="torch intra-op threads per forward pass; 0 means one per CPU core.",
    )
    max_request_bytes: int = Field(
        default=64 * 1024**2,
        gt=0,
        description="Largest inference request body (V2 tensors, JSON bodies).",
    )
    max_batch_size: int = Field(default=32, ge=1, description="Default adaptive batch size cap.")
    max_wait_ms: float = Field(
        default=2.0,
        ge=0,
        description="Default longest wait for a batch to fill once its first item arrived.",
    )

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'maas.db'}"

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
