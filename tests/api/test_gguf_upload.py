"""Uploading a GGUF file over HTTP: stored quantized by default, converted with ``dequantize``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from maas.registry.gguf import file_sha256
from tests.gguf_helpers import write_tiny_llama_gguf


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny.Q8_0.gguf"
    write_tiny_llama_gguf(path)
    return path


def _upload(client: TestClient, auth: dict[str, str], path: Path, **query: str) -> dict[str, Any]:
    response = client.post(
        "/admin/v1/models/tiny/versions",
        params={"filename": path.name, **query},
        content=path.read_bytes(),
        headers={**auth, "Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_an_uploaded_gguf_file_is_stored_quantized(
    client: TestClient, auth: dict[str, str], tiny_gguf: Path
) -> None:
    version = _upload(client, auth, tiny_gguf)
    assert (version["format"], version["task"]) == ("gguf", "text-generation")
    assert version["metadata"]["quantization"] == "Q8_0"
    assert version["metadata"]["file"] == tiny_gguf.name


def test_dequantize_converts_an_uploaded_gguf_file_to_safetensors(
    client: TestClient, auth: dict[str, str], tiny_gguf: Path
) -> None:
    version = _upload(client, auth, tiny_gguf, dequantize="true")
    assert (version["format"], version["task"]) == ("hf", "text-generation")
    source = version["params"]["source"]
    assert (source["file"], source["sha256"]) == (tiny_gguf.name, file_sha256(tiny_gguf))
    assert source["dtype"] == "float32"


def test_dequantize_of_something_else_is_a_400_naming_the_field(
    client: TestClient, auth: dict[str, str], tmp_path: Path
) -> None:
    onnx_like = tmp_path / "model.onnx"
    onnx_like.write_bytes(b"not a gguf")
    response = client.post(
        "/admin/v1/models/tiny/versions",
        params={"filename": onnx_like.name, "dequantize": "true"},
        content=onnx_like.read_bytes(),
        headers={**auth, "Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "dequantize"
