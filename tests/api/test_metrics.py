"""``/metrics``: requests by model, version, route and outcome; loads; memory."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from maas.registry.store import Registry
from tests.helpers import make_onnx_file


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text format (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def test_requests_are_counted_by_outcome_and_models_by_memory(
    client: TestClient, auth: dict[str, str], registry: Registry, tmp_path: Path
) -> None:
    registry.push(make_onnx_file(tmp_path / "m" / "model.onnx").parent, "affine", task="tensor")
    good = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0] * 4}]}
    bad = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [0] * 3}]}
    for _ in range(3):
        assert client.post("/v2/models/affine/infer", json=good, headers=auth).status_code == 200
    assert client.post("/v2/models/affine/infer", json=bad, headers=auth).status_code == 400
    assert client.post("/v2/models/ghost/infer", json=good, headers=auth).status_code == 404

    text = client.get("/metrics", headers=auth).text
    ok = {"model": "affine", "version": "1", "route": "infer"}
    assert _sample(text, "maas_requests_total", **ok, status="ok") == 3
    assert _sample(text, "maas_requests_total", **ok, status="invalid_request") == 1
    missing = {"model": "ghost", "version": "", "route": "infer", "status": "not_found"}
    assert _sample(text, "maas_requests_total", **missing) == 1
    assert _sample(text, "maas_request_seconds_count", model="affine", route="infer") == 3
    assert _sample(text, "maas_model_loads_total", model="affine", outcome="success") == 1
    assert _sample(text, "maas_models_loaded") == 1
    assert _sample(text, "maas_model_memory_bytes", model="affine:1") > 0
    assert _sample(text, "maas_batch_size_count", model="affine") >= 3
    assert _sample(text, "maas_compute_seconds_count", model="affine") >= 3


def test_admin_load_pin_and_unload(
    client: TestClient, auth: dict[str, str], registry: Registry, tmp_path: Path
) -> None:
    registry.push(make_onnx_file(tmp_path / "m" / "model.onnx").parent, "affine", task="tensor")
    r = client.post("/admin/v1/models/affine/versions/1/load?pin=true", headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["pinned"] is True
    assert r.json()["memory_bytes"] > 0
    loaded = client.get("/admin/v1/loaded", headers=auth).json()
    assert [m["ref"] for m in loaded["models"]] == ["affine:1"]
    assert loaded["used_bytes"] == r.json()["memory_bytes"]
    assert client.get("/v2/models/affine/ready", headers=auth).status_code == 200
    r = client.post("/admin/v1/models/affine/versions/1/unload", headers=auth)
    assert r.json() == {"ref": "affine:1", "unloaded": True}
    assert client.get("/admin/v1/loaded", headers=auth).json()["models"] == []
    r = client.post("/admin/v1/models/affine/versions/1/unload", headers=auth)
    assert r.json()["unloaded"] is False
    assert client.post("/admin/v1/models/affine/versions/7/load", headers=auth).status_code == 404
    text = client.get("/metrics", headers=auth).text
    assert _sample(text, "maas_model_unloads_total", model="affine", reason="request") == 1
