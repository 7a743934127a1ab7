"""``/v1``: the OpenAI-compatible API (models, embeddings)."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request, Response

from maas.api.bodies import openapi_body, read_body
from maas.api.deps import AdmittedDep, CtxDep, DataPlaneDep, RegistryDep, require_key, run_sync
from maas.api.feedback import answer_headers
from maas.api.inference_route import InferenceRoute
from maas.api.schemas.openai import MAX_EMBEDDING_INPUTS, EmbeddingsRequest
from maas.errors import InvalidRequestError, NotFoundError
from maas.registry.formats import DATASET_TASK
from maas.registry.refs import model_name
from maas.registry.schemas import ModelInfo

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(require_key)])
# Embeddings: admission and context made without FastAPI's dependency solving.
inference = APIRouter(
    prefix="/v1", tags=["openai"], dependencies=[Depends(require_key)], route_class=InferenceRoute
)


def _model_object(model: ModelInfo) -> dict[str, Any]:
    return {
        "id": model.name,
        "object": "model",
        "created": int(model.created_at.timestamp()),
        "owned_by": model.owner or "maas",
        "task": model.task,
        "versions": model.version_count,
        "aliases": model.aliases,
    }


@router.get("/models")
async def list_models(registry: RegistryDep, admitted: AdmittedDep) -> dict[str, Any]:
    """Models with at least one version that this key may use (others are not shown)."""
    models = await run_sync(registry.list_models)
    visible = [
        m
        for m in models
        if m.version_count and m.task != DATASET_TASK and admitted.allows_model(m.name)
    ]
    return {"object": "list", "data": [_model_object(m) for m in visible]}


@router.get("/models/{model_id}")
async def get_model(model_id: str, registry: RegistryDep) -> dict[str, Any]:
    model = await run_sync(registry.get_model, model_name(model_id))
    if model.task == DATASET_TASK:
        raise NotFoundError(f"{model_id!r} is a dataset, not a model", param="model")
    if not model.version_count:
        raise NotFoundError(f"model {model_id!r} has no versions", param="model")
    return _model_object(model)


def _normalise_input(raw: EmbeddingsRequest) -> list[str | list[int]]:
    value = raw.input
    items: list[str | list[int]]
    if isinstance(value, str):
        items = [value]
    elif value and all(isinstance(v, int) for v in value):
        items = [list(value)]  # type: ignore[arg-type]
    else:
        items = list(value)  # type: ignore[arg-type]
    if not items:
        raise InvalidRequestError("input must not be empty", param="input")
    if len(items) > MAX_EMBEDDING_INPUTS:
        raise InvalidRequestError(
            f"input holds {len(items)} items; at most {MAX_EMBEDDING_INPUTS} per request",
            param="input",
        )
    for i, item in enumerate(items):
        if len(item) == 0:
            raise InvalidRequestError(f"input[{i}] is empty", param="input")
    return items


@inference.post("/embeddings", openapi_extra=openapi_body(EmbeddingsRequest))
async def create_embeddings(
    request: Request,
    ctx: CtxDep,
    dataplane: DataPlaneDep,
) -> Response:
    body = await read_body(request, EmbeddingsRequest)
    ctx.ensure_model(model_name(body.model))
    items = _normalise_input(body)
    result = await dataplane.embed(ctx, body.model, items, dimensions=body.dimensions)
    data = []
    for index, vector in enumerate(result.vectors):
        embedding: Any
        if body.encoding_format == "base64":
            embedding = base64.b64encode(vector.astype("<f4", copy=False).tobytes()).decode()
        else:
            embedding = np.asarray(vector, dtype=np.float32)  # orjson writes it directly
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    # ``id`` is not in OpenAI's embeddings answer; its SDK keeps unknown fields, and the
    # body then names the prediction as the chat answers' ``id`` does.
    payload = {
        "id": ctx.prediction_id,
        "object": "list",
        "data": data,
        # The version that answered, as name:version (a routing policy may have chosen it).
        "model": result.version.ref,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
    return Response(
        orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
        media_type="application/json",
        headers=answer_headers(ctx),
    )
