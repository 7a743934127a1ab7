"""The official ``tritonclient.http`` against a real server: binary and JSON tensors, metadata."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator

import numpy as np
import pytest

from tests.e2e.conftest import LiveServer

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] not installed")
from tritonclient.utils import InferenceServerException  # noqa: E402

W = np.arange(12, dtype=np.float32).reshape(4, 3)  # baked into tests.helpers.make_onnx_file
B = np.ones(3, dtype=np.float32)


@pytest.fixture(scope="module")
def triton(serving_server: LiveServer) -> Iterator[tuple[object, dict[str, str]]]:
    # Pass a fresh headers dict on every infer call: tritonclient adds its
    # Inference-Header-Content-Length to the dict it is given, so a shared dict
    # would carry a stale length into the next (JSON) request.
    url = serving_server.url.removeprefix("http://")
    client = httpclient.InferenceServerClient(url=url, concurrency=4)
    try:
        yield client, {"Authorization": f"Bearer {serving_server.key}"}
    finally:
        _close(client)


def _close(client: object) -> None:
    """Close the client and finalise its sockets now, not at some later GC.

    geventhttpclient can leave a socket of a connection the server closed to the
    garbage collector; its ResourceWarning, raised inside ``__del__`` at the end
    of the session, would fail the run under ``-W error`` far from its cause.
    """
    client.close()  # type: ignore[attr-defined]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def _affine_request(x: np.ndarray, binary: bool) -> tuple[list[object], list[object]]:
    tensor = httpclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return [tensor], [httpclient.InferRequestedOutput("y", binary_data=binary)]


@pytest.mark.slow
@pytest.mark.parametrize("binary", [True, False])
def test_infer_on_an_onnx_model(triton: tuple[object, dict[str, str]], binary: bool) -> None:
    client, headers = triton
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    inputs, outputs = _affine_request(x, binary)
    result = client.infer("affine", inputs, outputs=outputs, headers=dict(headers))  # type: ignore[attr-defined]
    np.testing.assert_allclose(result.as_numpy("y"), x @ W + B, rtol=1e-5)
    response = result.get_response()
    assert response["model_name"] == "affine"
    assert response["model_version"] == "1"


@pytest.mark.slow
def test_concurrent_async_requests_each_get_their_own_rows(
    triton: tuple[object, dict[str, str]],
) -> None:
    client, headers = triton
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((1 + i % 3, 4)).astype(np.float32) for i in range(24)]
    pending = []
    for i, x in enumerate(xs):
        inputs, outputs = _affine_request(x, binary=i % 2 == 0)
        pending.append(client.async_infer("affine", inputs, outputs=outputs, headers=dict(headers)))  # type: ignore[attr-defined]
    for x, request in zip(xs, pending, strict=True):
        np.testing.assert_allclose(request.get_result().as_numpy("y"), x @ W + B, rtol=1e-5)


@pytest.mark.slow
def test_health_and_metadata(triton: tuple[object, dict[str, str]]) -> None:
    client, headers = triton
    assert client.is_server_live(headers=headers)  # type: ignore[attr-defined]
    assert client.is_server_ready(headers=headers)  # type: ignore[attr-defined]
    # Servable but never loaded: ready (it loads on the first request), so a client
    # that waits for readiness before its first request does not wait forever.
    assert client.is_model_ready("minilm", headers=headers)  # type: ignore[attr-defined]
    assert not client.is_model_ready("no-such-model", headers=headers)  # type: ignore[attr-defined]
    server = client.get_server_metadata(headers=headers)  # type: ignore[attr-defined]
    assert server["name"] == "maas"
    assert "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata("affine", headers=headers)  # type: ignore[attr-defined]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]
    assert meta["platform"] == "onnxruntime_onnx"
    same = client.get_model_metadata("affine", model_version="1", headers=headers)  # type: ignore[attr-defined]
    assert same == meta
    embed = client.get_model_metadata("minilm", headers=headers)  # type: ignore[attr-defined]
    assert embed["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert embed["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]


@pytest.mark.slow
def test_bytes_tensors_embed_text(triton: tuple[object, dict[str, str]]) -> None:
    client, headers = triton
    texts = np.array([b"first sentence", "第二句".encode()], dtype=np.object_)
    results = []
    for binary in (True, False):
        tensor = httpclient.InferInput("text", [2], "BYTES")
        tensor.set_data_from_numpy(texts, binary_data=binary)
        out = httpclient.InferRequestedOutput("embedding", binary_data=binary)
        result = client.infer("minilm", [tensor], outputs=[out], headers=dict(headers))  # type: ignore[attr-defined]
        results.append(result.as_numpy("embedding"))
    assert results[0].shape == (2, 384)
    np.testing.assert_allclose(results[0], results[1], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(results[0], axis=1), 1.0, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "tensor", "message"),
    [
        ("affine", httpclient.InferInput("x", [1, 4], "INT32"), "expected datatype FP32"),
        ("affine", httpclient.InferInput("x", [1, 5], "FP32"), "expected shape [-1, 4]"),
        ("ghost", httpclient.InferInput("x", [1, 4], "FP32"), "ghost"),
    ],
)
def test_errors_reach_the_client_with_their_message(
    triton: tuple[object, dict[str, str]], model: str, tensor: object, message: str
) -> None:
    client, headers = triton
    dtype = np.int32 if tensor.datatype() == "INT32" else np.float32  # type: ignore[attr-defined]
    tensor.set_data_from_numpy(np.zeros(tensor.shape(), dtype=dtype))  # type: ignore[attr-defined]
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, [tensor], headers=dict(headers))  # type: ignore[attr-defined]
    assert message in str(info.value)
    assert info.value.status() in ("400", "404")


@pytest.mark.slow
def test_a_missing_key_is_refused(serving_server: LiveServer) -> None:
    client = httpclient.InferenceServerClient(url=serving_server.url.removeprefix("http://"))
    try:
        inputs, outputs = _affine_request(np.zeros((1, 4), np.float32), binary=True)
        with pytest.raises(InferenceServerException) as info:
            client.infer("affine", inputs, outputs=outputs)
        assert info.value.status() == "401"
    finally:
        _close(client)
