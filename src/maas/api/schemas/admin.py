"""Request bodies of the management API. Unknown fields are refused: typos fail loudly."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


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
