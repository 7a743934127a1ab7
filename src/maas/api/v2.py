"""``/v2``: the Open Inference Protocol (KServe V2 / Triton HTTP), with binary tensors.

The routes are thin: read the body, let ``maas.api.v2codec`` decode it, run it
through the DataPlane, encode the answer. Errors come out as ``{"error": "..."}``
(``api/errors.py`` picks that shape for every ``/v2`` path).

Health routes are public, like ``/healthz``: orchestrators probe them without a key.
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from maas import __version__
from maas.api.deps import CtxDep, DataPlaneDep, RegistryDep, require_key, version_ref
from maas.api.feedback import answer_headers
from maas.api.inference_route import InferenceRoute
from maas.api.v2codec import decode_request, encode_response, select_outputs
from maas.errors import InvalidRequestError, MaasError
from maas.serving.context import RequestContext
from maas.serving.dataplane import DataPlane

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data"]
# V2 "platform" names; Triton uses the same spelling for ONNX Runtime.
_PLATFORMS = {"onnx": "onnxruntime_onnx", "hf": "pytorch_huggingface"}

public = APIRouter(prefix="/v2", tags=["v2"])
router = APIRouter(prefix="/v2", tags=["v2"], dependencies=[Depends(require_key)])
# The infer routes: admission and context made without FastAPI's dependency solving.
inference = APIRouter(
    prefix="/v2", tags=["v2"], dependencies=[Depends(require_key)], route_class=InferenceRoute
)


@public.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@public.get("/health/ready")
async def ready(request: Request, registry: RegistryDep) -> JSONResponse:
    if request.app.state.draining:  # SIGTERM: a graceful shutdown has begun (cli/serve.py)
        return JSONResponse({"ready": False}, status_code=503)
    try:
        await anyio.to_thread.run_sync(registry.db.ping)
    except Exception:
        return JSONResponse({"ready": False}, status_code=503)
    return JSONResponse({"ready": True})


@router.get("")
async def server_metadata() -> dict[str, Any]:
    return {"name": "maas", "version": __version__, "extensions": EXTENSIONS}


async def _metadata(dataplane: DataPlane, ref: str) -> dict[str, Any]:
    version, inputs, outputs = await dataplane.signature(ref)
    versions = await anyio.to_thread.run_sync(dataplane.registry.list_versions, version.model)
    return {
        "name": version.model,
        "versions": [str(v.version) for v in versions if v.status == "ready"],
        "platform": _PLATFORMS.get(version.format, version.format),
        "inputs": [spec.as_dict() for spec in inputs],
        "outputs": [spec.as_dict() for spec in outputs],
    }


@router.get("/models/{model}")
async def model_metadata(model: str, dataplane: DataPlaneDep) -> dict[str, Any]:
    return await _metadata(dataplane, model)


@router.get("/models/{model}/versions/{version}")
async def version_metadata(model: str, version: str, dataplane: DataPlaneDep) -> dict[str, Any]:
    return await _metadata(dataplane, version_ref(model, version))


async def _ready(dataplane: DataPlane, ref: str) -> JSONResponse:
    # V2: 200 means ready, a 4xx means not. Ready means servable: the reference
    # resolves to a version in status "ready". Such a version loads on its first
    # request, so a client that waits for readiness before its first request
    # (tritonclient's is_model_ready) must not wait for a load that only a request
    # would start. "loaded" tells whether that first request will pay a cold start.
    version = await dataplane.resolve(ref)  # 404 when unknown or not servable
    loaded = await dataplane.host.is_loaded(version.ref)
    return JSONResponse({"name": version.model, "ready": True, "loaded": loaded})


@router.get("/models/{model}/ready")
async def model_ready(model: str, dataplane: DataPlaneDep) -> JSONResponse:
    return await _ready(dataplane, model)


@router.get("/models/{model}/versions/{version}/ready")
async def version_ready(model: str, version: str, dataplane: DataPlaneDep) -> JSONResponse:
    return await _ready(dataplane, version_ref(model, version))


def _header_length(request: Request) -> int | None:
    raw = request.headers.get(HEADER_LENGTH)
    if raw is None:
        return None
    if not (raw.strip().isascii() and raw.strip().isdigit()):
        raise InvalidRequestError(f"{HEADER_LENGTH} must be a non-negative integer, got {raw!r}")
    return int(raw)


async def _infer(
    request: Request, ctx: RequestContext, dataplane: DataPlane, model: str, ref: str
) -> Response:
    # The size limit (MAAS_MAX_REQUEST_BYTES) is enforced for every route by TrustMiddleware.
    body = await request.body()
    decoded = decode_request(body, _header_length(request))
    tensors = {tensor.name: tensor.data for tensor in decoded.inputs}
    result = await dataplane.infer(ctx, ref, tensors)
    names, binary = select_outputs(decoded, list(result.outputs))
    try:
        # The answer's ``id`` echoes the request's (the protocol says so); a request
        # without one gets the prediction id there. The header always has it.
        payload, json_length = encode_response(
            model_name=result.version.model,
            model_version=str(result.version.version),
            request_id=decoded.id or ctx.prediction_id,
            outputs=[(name, result.outputs[name]) for name in names],
            binary=binary,
        )
    except ValueError as exc:  # the model produced an output the protocol cannot carry
        raise MaasError(f"model {model}: {exc}") from exc
    headers = answer_headers(ctx)
    if json_length is None:
        return Response(payload, media_type="application/json", headers=headers)
    headers[HEADER_LENGTH] = str(json_length)
    return Response(payload, media_type="application/octet-stream", headers=headers)


@inference.post("/models/{model}/infer")
async def model_infer(
    model: str, request: Request, ctx: CtxDep, dataplane: DataPlaneDep
) -> Response:
    return await _infer(request, ctx, dataplane, model, model)


@inference.post("/models/{model}/versions/{version}/infer")
async def version_infer(
    model: str, version: str, request: Request, ctx: CtxDep, dataplane: DataPlaneDep
) -> Response:
    return await _infer(request, ctx, dataplane, model, version_ref(model, version))
