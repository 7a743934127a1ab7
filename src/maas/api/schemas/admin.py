"""Request bodies of the management API. Unknown fields are refused: typos fail loudly."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateModelRequest(_Body):
    name: str = Field(description="^[a-z0-9][a-z0-9._-]{0,63}$")
    task: str = Field(
        description="embeddings | text-classification | text-generation | "
        "image-classification | tensor"
    )
    description: str = ""
    owner: str | None = None
    tags: dict[str, Any] = Field(default_factory=dict)


class UpdateModelRequest(_Body):
    description: str | None = None
    owner: str | None = None
    tags: dict[str, Any] | None = None


class UpdateVersionRequest(_Body):
    description: str | None = None
    metrics: dict[str, Any] | None = Field(default=None, description="merged into existing")
    tags: dict[str, Any] | None = None


class SetAliasRequest(_Body):
    version: int = Field(ge=1)
    reason: str = ""


class AliasInfo(BaseModel):
    model: str
    alias: str
    version: int


class DeletedResponse(BaseModel):
    deleted: str


class DeploymentRequest(_Body):
    """Settings to change; those not sent keep their values (null clears one)."""

    loaded: StrictBool | None = Field(
        default=None, description="true: loaded on every instance; false: unloaded; null: on demand"
    )
    pinned: StrictBool = Field(default=False, description="never evicted by the memory budget")
    replicas: StrictInt | None = Field(default=None, description="fixed replica count (Ray)")
    min_replicas: StrictInt | None = Field(default=None, description="autoscaling floor (Ray)")
    max_replicas: StrictInt | None = Field(default=None, description="autoscaling ceiling (Ray)")
    target_ongoing_requests: float | None = Field(
        default=None, description="autoscaling target per replica (Ray)"
    )
    num_cpus: float | None = Field(default=None, description="CPUs per replica (Ray)")
