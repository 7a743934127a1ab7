"""Every inference answer names its prediction and the version that made it, on the wire."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.e2e.conftest import LiveServer

PREDICTION = re.compile(r"^(chatcmpl|cmpl|emb|pred)-[0-9a-f]{24}$")


def check(r: httpx.Response, version: str) -> str:
    assert r.status_code == 200, r.text
    assert r.headers["x-maas-model-version"] == version
    prediction_id = r.headers["x-maas-prediction-id"]
    assert PREDICTION.match(prediction_id), prediction_id
    return prediction_id


def test_embeddings_and_v2_answers_carry_both_headers(serving_server: LiveServer) -> None:
    auth = {"Authorization": f"Bearer {serving_server.key}"}
    with httpx.Client(base_url=serving_server.url, headers=auth, timeout=60) as http:
        r = http.post("/v1/embeddings", json={"model": "minilm", "input": ["hello", "world"]})
        assert check(r, "minilm:1") == r.json()["id"]
        assert r.headers["x-maas-prediction-id"].startswith("emb-")
        tensor = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}]}
        for path in ("/v2/models/affine/infer", "/v2/models/affine/versions/1/infer"):
            r = http.post(path, json=tensor)
            # No request id: the answer's id is the prediction id.
            assert check(r, "affine:1") == r.json()["id"]
        r = http.post("/v2/models/affine/infer", json={**tensor, "id": "mine"})
        check(r, "affine:1")
        assert r.json()["id"] == "mine"  # the protocol echoes the caller's id
        texts = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]}
        check(http.post("/v2/models/minilm/infer", json=texts), "minilm:1")
        # Binary tensors: the header is there beside Inference-Header-Content-Length.
        r = http.post(
            "/v2/models/affine/infer",
            json={**tensor, "outputs": [{"name": "y", "parameters": {"binary_data": True}}]},
        )
        check(r, "affine:1")
        assert "inference-header-content-length" in r.headers
        # Refused requests name no prediction.
        r = http.post("/v1/embeddings", json={"model": "minilm", "input": []})
        assert r.status_code == 400 and "x-maas-prediction-id" not in r.headers


@pytest.mark.parametrize("stream", [False, True])
def test_chat_and_completion_answers_carry_both_headers_and_use_the_id(
    smollm2_live: LiveServer, stream: bool
) -> None:
    auth = {"Authorization": f"Bearer {smollm2_live.key}"}
    chat = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Say hi"}],
        "max_tokens": 4,
        "stream": stream,
    }
    completion = {"model": "smollm2", "prompt": "Hello", "max_tokens": 4, "stream": stream}
    with httpx.Client(base_url=smollm2_live.url, headers=auth, timeout=120) as http:
        for path, body, prefix in (
            ("/v1/chat/completions", chat, "chatcmpl-"),
            ("/v1/completions", completion, "cmpl-"),
        ):
            r = http.post(path, json=body)
            prediction_id = check(r, "smollm2:1")
            assert prediction_id.startswith(prefix)
            if stream:
                first = next(x for x in r.text.splitlines() if x.startswith("data: {"))
                assert f'"id": "{prediction_id}"' in first
            else:
                assert r.json()["id"] == prediction_id
            # A generation is recorded, a moment after its answer (off its path): feedback
            # sent at once still finds it.
            r = http.post("/v1/feedback", json={"prediction_id": prediction_id, "score": 1.0})
            assert r.status_code == 200, r.text
            assert r.json()["model"] == "smollm2" and r.json()["predicted"] is None
