"""Admission: the route table decides what is metered; the trust layer's off switch."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from maas.api.app import create_app
from maas.api.permissions import INFER, RULES
from maas.config import Settings
from maas.registry.store import Registry
from tests.helpers import make_onnx_file

X = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


def test_exactly_the_inference_routes_are_metered() -> None:
    metered = {route for route, rule in RULES.items() if rule.metered}
    assert metered == {
        ("POST", "/v1/embeddings"),
        ("POST", "/v1/explain"),
        ("POST", "/v1/redact"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/audio/transcriptions"),
        ("POST", "/v1/audio/translations"),
        ("POST", "/v1/audio/speech"),
        ("POST", "/v1/images/generations"),
        ("POST", "/v2/models/{model}/infer"),
        ("POST", "/v2/models/{model}/versions/{version}/infer"),
    }
    assert all(rule.scopes == INFER for rule in RULES.values() if rule.metered)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "example.com"])
def test_trust_layer_off_is_refused_on_a_non_loopback_bind(home: Path, host: str) -> None:
    with pytest.raises(ValidationError, match="loopback"):
        Settings(home=home, auth=False, host=host)
    # Settings changed in code skip pydantic's validators; create_app checks again.
    changed = Settings(home=home).model_copy(update={"auth": False, "host": host})
    with pytest.raises(ValueError, match="loopback"):
        create_app(changed)


def test_trust_layer_off_serves_without_a_key_and_meters_nothing(
    home: Path, tmp_path: Path
) -> None:
    settings = Settings(home=home, auth=False, host="127.0.0.1")
    registry = Registry(settings)
    try:
        registry.push(make_onnx_file(tmp_path / "m" / "model.onnx").parent, "affine", task="tensor")
    finally:
        registry.close()
    with TestClient(create_app(settings)) as client:
        r = client.post("/v2/models/affine/infer", json=X)
        assert r.status_code == 200, r.text
        # y = x @ W + b with W = arange(12).reshape(4, 3), b = 1
        assert r.json()["outputs"][0]["data"] == [61.0, 71.0, 81.0]
        assert client.get("/admin/v1/models").status_code == 200
        assert client.app.state.usage.pending == []  # nothing queued for metering
