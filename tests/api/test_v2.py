"""``/v2`` (Open Inference Protocol) in process: metadata, JSON and binary inference, errors."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from maas.registry.store import Registry
from tests.helpers import make_onnx_file

W = np.arange(12, dtype=np.float32).reshape(4, 3)  # the weights make_onnx_file bakes in
B = np.ones(3, dtype=np.float32)


@pytest.fixture
def affine(registry: Registry, tmp_path: Path) -> str:
    registry.push(make_onnx_file(tmp_path / "m" / "model.onnx").parent, "affine", task="tensor")
    return "affine"


def _infer(client: TestClient, auth: dict[str, str], body: Any, path: str = "affine") -> Any:
    return client.post(f"/v2/models/{path}/infer", json=body, headers=auth)


def _post_binary(
    client: TestClient, auth: dict[str, str], model: str, name: str, shape: list[int], raw: bytes
) -> Any:
    """POST one BYTES input in the binary tensor extension's layout."""
    tensor = {"name": name, "datatype": "BYTES", "shape": shape}
    header = json.dumps(
        {"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}]}
    ).encode()
    return client.post(
        f"/v2/models/{model}/infer",
        content=header + raw,
        headers={**auth, "Inference-Header-Content-Length": str(len(header))},
    )


def _length_prefixed(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def _x(data: Any, shape: list[int], datatype: str = "FP32") -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "data": data}]}


def test_server_metadata_names_the_binary_extension(
    client: TestClient, auth: dict[str, str]
) -> None:
    body = client.get("/v2", headers=auth).json()
    assert body["name"] == "maas"
    assert "binary_tensor_data" in body["extensions"]


def test_health_routes_answer_without_a_key(client: TestClient) -> None:
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").json() == {"ready": True}


def test_model_metadata_lists_typed_inputs_and_outputs(
    client: TestClient, auth: dict[str, str], affine: str
) -> None:
    for path in ("/v2/models/affine", "/v2/models/affine/versions/1"):
        body = client.get(path, headers=auth).json()
        assert body["name"] == "affine"
        assert body["versions"] == ["1"]
        assert body["platform"] == "onnxruntime_onnx"
        assert body["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
        assert body["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]


def test_json_inference_computes_the_graph(
    client: TestClient, auth: dict[str, str], affine: str
) -> None:
    x = np.array([[1, 2, 3, 4], [0, 0, 0, 1]], dtype=np.float32)
    r = _infer(client, auth, {"id": "req-7", **_x(x.tolist(), [2, 4])})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "affine"
    assert body["model_version"] == "1"
    assert body["id"] == "req-7"
    (out,) = body["outputs"]
    assert out["name"] == "y"
    assert out["datatype"] == "FP32"
    assert out["shape"] == [2, 3]
    np.testing.assert_allclose(np.array(out["data"]).reshape(2, 3), x @ W + B)


def test_binary_request_and_response_round_trip(
    client: TestClient, auth: dict[str, str], affine: str
) -> None:
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    raw = x.tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [3, 4],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    ).encode()
    r = client.post(
        "/v2/models/affine/infer",
        content=header + raw,
        headers={**auth, "Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 200, r.text
    json_length = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.content[:json_length])
    (out,) = meta["outputs"]
    assert out["parameters"]["binary_data_size"] == 3 * 3 * 4
    y = np.frombuffer(r.content[json_length:], dtype="<f4").reshape(3, 3)
    np.testing.assert_allclose(y, x @ W + B, rtol=1e-6)


def test_requesting_an_unknown_output_is_a_400(
    client: TestClient, auth: dict[str, str], affine: str
) -> None:
    r = _infer(client, auth, {**_x([0] * 4, [1, 4]), "outputs": [{"name": "nope"}]})
    assert r.status_code == 400
    assert "nope" in r.json()["error"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (_x([1, 2, 3, 4], [1, 4], "INT64"), "'x': expected datatype FP32, got INT64"),
        (_x([1.0] * 6, [2, 3]), "'x': expected shape [-1, 4], got [2, 3]"),
        (_x([1.0] * 3, [1, 4]), "expected 4 elements"),
        (_x(["a", "b", "c", "d"], [1, 4]), "input 'x'"),
        ({"inputs": [{"name": "z", "datatype": "FP32", "shape": [1], "data": [1.0]}]}, "'z'"),
        ({"inputs": []}, "non-empty 'inputs'"),
        (_x([1.0] * 4, [1, 4], "FP128"), "unknown datatype"),
    ],
)
def test_bad_tensors_get_a_400_naming_the_problem(
    client: TestClient, auth: dict[str, str], affine: str, body: Any, needle: str
) -> None:
    r = _infer(client, auth, body)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"}
    assert needle in r.json()["error"]


def test_invalid_json_and_header_length_are_400s(
    client: TestClient, auth: dict[str, str], affine: str
) -> None:
    r = client.post("/v2/models/affine/infer", content=b"{nope", headers=auth)
    assert r.status_code == 400
    assert "JSON" in r.json()["error"]
    r = client.post(
        "/v2/models/affine/infer",
        content=b"{}",
        headers={**auth, "Inference-Header-Content-Length": "99"},
    )
    assert r.status_code == 400
    assert "Inference-Header-Content-Length" in r.json()["error"]
    r = client.post(
        "/v2/models/affine/infer",
        content=b"{}",
        headers={**auth, "Inference-Header-Content-Length": "-1"},
    )
    assert r.status_code == 400


def test_unknown_models_and_versions_are_404s(
    client: TestClient, auth: dict[str, str], affine: str
) -> None:
    for path in ("/v2/models/ghost", "/v2/models/affine/versions/9"):
        r = client.get(path, headers=auth)
        assert r.status_code == 404, path
        assert isinstance(r.json()["error"], str)
    r = client.post("/v2/models/affine/versions/9/infer", json=_x([0] * 4, [1, 4]), headers=auth)
    assert r.status_code == 404
    r = client.post("/v2/models/Bad Name/infer", json=_x([0] * 4, [1, 4]), headers=auth)
    assert r.status_code == 400


def test_a_servable_model_is_ready_before_its_first_request_and_says_if_loaded(
    client: TestClient, auth: dict[str, str], affine: str
) -> None:
    before = client.get("/v2/models/affine/ready", headers=auth)
    assert before.status_code == 200
    assert before.json() == {"name": "affine", "ready": True, "loaded": False}
    assert _infer(client, auth, _x([0.0] * 4, [1, 4])).status_code == 200
    after = client.get("/v2/models/affine/versions/1/ready", headers=auth)
    assert after.status_code == 200
    assert after.json()["loaded"] is True
    missing = client.get("/v2/models/nothing/ready", headers=auth)
    assert missing.status_code == 404
    assert "nothing" in missing.json()["error"]


def test_oversized_body_is_413(registry: Registry, tmp_path: Path) -> None:
    from maas.api.app import create_app
    from maas.config import Settings

    settings = Settings(home=registry.settings.home, max_request_bytes=1000)
    registry.push(make_onnx_file(tmp_path / "m" / "model.onnx").parent, "affine", task="tensor")
    with TestClient(create_app(settings)) as client:
        key = settings.admin_key_file.read_text().strip()
        r = client.post(
            "/v2/models/affine/infer",
            json=_x([0.0] * 400, [100, 4]),
            headers={"Authorization": f"Bearer {key}"},
        )
    assert r.status_code == 413
    assert "exceeds 1000 bytes" in r.json()["error"]


def test_bytes_tensors_reach_an_embedding_model(
    client: TestClient, auth: dict[str, str], registry: Registry, minilm_dir: Path
) -> None:
    registry.push(minilm_dir, "minilm", task="embeddings")
    texts = ["a cat sat on the mat", "量子计算"]
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": texts}]}
    r = _infer(client, auth, body, "minilm")
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert out["name"] == "embedding"
    assert out["shape"] == [2, 384]
    vectors = np.array(out["data"], dtype=np.float32).reshape(2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    via_openai = client.post(
        "/v1/embeddings", json={"model": "minilm", "input": texts}, headers=auth
    ).json()["data"]
    for row, item in zip(vectors, via_openai, strict=True):
        np.testing.assert_allclose(row, item["embedding"], atol=1e-6)
    # binary BYTES: 4-byte little-endian length, then the UTF-8 bytes
    r = _post_binary(
        client, auth, "minilm", "text", [2, 1], _length_prefixed([t.encode() for t in texts])
    )
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(
        np.array(r.json()["outputs"][0]["data"]).reshape(2, 384), vectors, atol=1e-6
    )
    r = _infer(client, auth, _x([1.0], [1]), "minilm")
    assert r.status_code == 400
    assert "expected exactly one input tensor 'text'" in r.json()["error"]


def test_png_bytes_reach_an_image_classifier(
    client: TestClient, auth: dict[str, str], registry: Registry, tmp_path: Path
) -> None:
    import io

    from PIL import Image

    from tests.helpers import make_tiny_image_classifier

    registry.push(make_tiny_image_classifier(tmp_path / "vit"), "digits")
    pngs = []
    for shade in (0, 255):
        buf = io.BytesIO()
        Image.new("RGB", (40, 30), (shade, 128, 255 - shade)).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    r = _post_binary(client, auth, "digits", "image", [2], _length_prefixed(pngs))
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert outputs["probabilities"]["shape"] == [2, 10]
    probs = np.array(outputs["probabilities"]["data"]).reshape(2, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # labels are in index order, so the top label is the argmax of its row
    labels = outputs["label"]["data"]
    assert labels == [f"digit-{int(np.argmax(row))}" for row in probs]
    # one undecodable image fails the request with a message naming the item
    r = _post_binary(client, auth, "digits", "image", [1], _length_prefixed([b"nope"]))
    assert r.status_code == 400
    assert "input[0]" in r.json()["error"]


def test_an_alias_move_reaches_the_next_request_at_once(
    client: TestClient, auth: dict[str, str], affine: str, registry: Registry, tmp_path: Path
) -> None:
    second = registry.push(make_onnx_file(tmp_path / "v2" / "model.onnx").parent, "affine")
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    assert _infer(client, auth, body).json()["model_version"] == "1"  # now cached
    moved = client.put(
        "/admin/v1/models/affine/aliases/production", json={"version": second.version}, headers=auth
    )
    assert moved.status_code == 200
    # The commit in this process emptied its resolve cache: the next request sees the move,
    # and keeps the loaded version 1 only while version 2 loads (a zero-downtime switch).
    versions = [_infer(client, auth, body).json()["model_version"]]
    deadline = time.monotonic() + 10
    while versions[-1] != str(second.version) and time.monotonic() < deadline:
        versions.append(_infer(client, auth, body).json()["model_version"])
    assert versions[-1] == str(second.version)
    assert set(versions) <= {"1", str(second.version)}
