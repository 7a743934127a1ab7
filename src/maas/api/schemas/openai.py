"""OpenAI-compatible request bodies.

Unknown fields are ignored rather than refused, as OpenAI's own API does, so
clients that send newer optional fields keep working.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_EMBEDDING_INPUTS = 2048


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="A string, a list of strings, a token array, or a list of token arrays."
    )
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None
