"""``POST /v1/redact``: find and redact personal data in text, without a model.

The response carries the redacted text and, for each finding, its kind and
offsets in the input; the raw values never appear in it.
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from maas.api.bodies import JsonBodyRoute
from maas.api.deps import CtxDep, require_key
from maas.errors import InvalidRequestError, PayloadTooLargeError
from maas.security.pii import PiiKind, RedactionResult, parse_kinds, redact

router = APIRouter(
    prefix="/v1",
    tags=["safety"],
    dependencies=[Depends(require_key)],
    route_class=JsonBodyRoute,
)

MAX_INPUT_BYTES = 1024 * 1024  # UTF-8 bytes over all items


class RedactRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str | list[str] = Field(description="A string or a list of strings (1 MiB in all).")
    kinds: list[str] | None = Field(
        default=None,
        description="Kinds to redact: " + ", ".join(k.value for k in PiiKind) + "; default all.",
    )


def _items(body: RedactRequest) -> list[str]:
    items = [body.input] if isinstance(body.input, str) else body.input
    size = sum(len(item.encode("utf-8", "surrogatepass")) for item in items)
    if size > MAX_INPUT_BYTES:
        raise PayloadTooLargeError(
            f"input holds {size} bytes of text; at most {MAX_INPUT_BYTES} per request",
            param="input",
        )
    return items


def _kinds(body: RedactRequest) -> frozenset[PiiKind] | None:
    if body.kinds is None:
        return None
    if not body.kinds:
        raise InvalidRequestError(
            "kinds must not be empty; leave it out to redact every kind", param="kinds"
        )
    return parse_kinds(body.kinds, param="kinds")


def _redact_all(items: list[str], kinds: frozenset[PiiKind] | None) -> list[RedactionResult]:
    return [redact(item, kinds) for item in items]


@router.post("/redact")
async def create_redaction(body: RedactRequest, ctx: CtxDep) -> dict[str, Any]:
    kinds = _kinds(body)
    items = _items(body)
    ctx.route, ctx.items = "redact", len(items)
    # Up to a megabyte of regex work: off the event loop.
    results = await anyio.to_thread.run_sync(_redact_all, items, kinds)
    counts: dict[str, int] = {}
    data = []
    for index, result in enumerate(results):
        for kind, n in result.counts.items():
            counts[kind.value] = counts.get(kind.value, 0) + n
        found = [{"kind": m.kind.value, "start": m.start, "end": m.end} for m in result.matches]
        data.append({"index": index, "text": result.text, "found": found})
    return {"object": "redaction", "data": data, "counts": dict(sorted(counts.items()))}
