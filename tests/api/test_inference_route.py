"""InferenceRoute and InferenceLane: inference routes without per-request dependency solving."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.testclient import TestClient

from maas.api.deps import CtxDep, DataPlaneDep, RegistryDep, require_key
from maas.api.inference_route import InferenceLane, InferenceRoute
from maas.registry.store import Registry
from tests.helpers import make_onnx_file


def _router() -> APIRouter:
    return APIRouter(dependencies=[Depends(require_key)], route_class=InferenceRoute)


def test_a_parameter_it_cannot_fill_is_refused_when_the_route_is_built() -> None:
    router = _router()
    with pytest.raises(TypeError, match="cannot fill parameter 'registry'"):

        @router.post("/models/{model}/infer")
        async def infer(model: str, request: Request, registry: RegistryDep) -> Response:
            return Response()


def test_a_dependency_other_than_require_key_is_refused() -> None:
    async def extra() -> None:
        return None

    router = APIRouter(
        dependencies=[Depends(require_key), Depends(extra)], route_class=InferenceRoute
    )
    with pytest.raises(TypeError, match="runs only require_key"):

        @router.post("/models/{model}/infer")
        async def infer(model: str, ctx: CtxDep, dataplane: DataPlaneDep) -> Response:
            return Response()


def test_an_inference_route_needs_require_key() -> None:
    router = APIRouter(route_class=InferenceRoute)
    with pytest.raises(TypeError, match="needs require_key"):

        @router.post("/models/{model}/infer")
        async def infer(model: str, ctx: CtxDep) -> Response:
            return Response()


def test_the_lane_serves_only_inference_routes() -> None:
    router = APIRouter()

    @router.post("/x")
    async def plain() -> Response:
        return Response()

    with pytest.raises(TypeError, match="InferenceRoutes only"):
        InferenceLane(FastAPI(), fastapi=FastAPI(), routes=router.routes)


def test_through_the_lane_admission_metering_and_errors_are_those_of_any_route(
    client: TestClient, auth: dict[str, str], registry: Registry, tmp_path: Path
) -> None:
    registry.push(make_onnx_file(tmp_path / "m" / "model.onnx").parent, "affine", task="tensor")
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    url = "/v2/models/affine/infer"
    # Served, with the trust middleware's headers around it.
    ok = client.post(url, json=body, headers=auth)
    assert ok.status_code == 200 and ok.json()["model_name"] == "affine"
    assert ok.headers["x-content-type-options"] == "nosniff"
    # Admission: no key, a bad key, a key whose allowlist excludes the model.
    assert client.post(url, json=body).status_code == 401
    bad = client.post(url, json=body, headers={"Authorization": "Bearer maas-sk-nope"})
    assert bad.status_code == 401 and "error" in bad.json()  # the V2 error shape
    other = client.post(
        "/admin/v1/keys",
        json={"name": "other", "scopes": ["infer"], "models": ["something-else"]},
        headers=auth,
    ).json()["key"]
    refused = client.post(url, json=body, headers={"Authorization": f"Bearer {other}"})
    assert refused.status_code == 403 and "may not use model 'affine'" in refused.json()["error"]
    # The error boundary: a bad body is a 400 in V2's shape, an unknown model a 404.
    malformed = client.post(url, content=b"{not json", headers=auth)
    assert malformed.status_code == 400 and set(malformed.json()) == {"error"}
    missing = client.post("/v2/models/nope/infer", json=body, headers=auth)
    assert missing.status_code == 404 and "nope" in missing.json()["error"]
    # Metering: every admitted request above is one usage row (the usage report flushes
    # what is queued), refusals by admission none.
    report = client.get("/admin/v1/usage?group_by=route", headers=auth).json()
    infer_rows = [row for row in report["data"] if row["route"] == "infer"]
    assert sum(row["requests"] for row in infer_rows) == 3  # ok, malformed, missing
