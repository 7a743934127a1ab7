"""The official `openai` client against a real server: vectors equal the in-process model."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import LiveServer

openai = pytest.importorskip("openai")

SENTENCES = [
    "The cat sits on the mat.",
    "A quick brown fox jumps over the lazy dog.",
    "Model serving with adaptive batching.",
    "北京是中国的首都。",
]


@pytest.fixture(scope="module")
def reference(minilm_dir: Path) -> np.ndarray:
    """Embeddings computed in-process with plain transformers (mean pool + normalise)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    model = AutoModel.from_pretrained(str(minilm_dir)).eval()
    enc = tok(SENTENCES, padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=1).numpy()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ["base64", "float"])
def test_openai_client_embeddings_match_in_process_model(
    serving_server: LiveServer, reference: np.ndarray, encoding: str
) -> None:
    kwargs = {} if encoding == "base64" else {"encoding_format": "float"}
    with openai.OpenAI(base_url=f"{serving_server.url}/v1", api_key=serving_server.key) as client:
        response = client.embeddings.create(model="minilm", input=SENTENCES, **kwargs)
    got = np.array([d.embedding for d in response.data], dtype=np.float32)
    assert got.shape == (4, 384)
    assert np.all(_cosines(got, reference) > 0.999)
    assert response.usage.prompt_tokens > len(SENTENCES)
    assert response.model == "minilm:1"  # the version that answered


@pytest.mark.slow
def test_raw_http_base64_is_little_endian_float32(serving_server: LiveServer) -> None:
    r = httpx.post(
        f"{serving_server.url}/v1/embeddings",
        headers={"Authorization": f"Bearer {serving_server.key}"},
        json={"model": "minilm:1", "input": "hello", "encoding_format": "base64"},
    )
    assert r.status_code == 200, r.text
    vec = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    assert vec.shape == (384,)
    assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-4


@pytest.mark.slow
def test_concurrent_requests_are_batched_and_stay_matched(
    serving_server: LiveServer, reference: np.ndarray
) -> None:
    headers = {"Authorization": f"Bearer {serving_server.key}"}

    def one(i: int) -> tuple[int, np.ndarray]:
        r = httpx.post(
            f"{serving_server.url}/v1/embeddings",
            headers=headers,
            json={"model": "minilm", "input": SENTENCES[i % 4]},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        return i, np.array(r.json()["data"][0]["embedding"], dtype=np.float32)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(48)))
    for i, vec in results:
        assert float(np.dot(vec, reference[i % 4])) > 0.999
    metrics = httpx.get(f"{serving_server.url}/metrics", headers=headers).text
    counts = {}
    for line in metrics.splitlines():
        if line.startswith('maas_batch_size_bucket{le="1.0",model="minilm"}'):
            counts["le1"] = float(line.split()[-1])
        if line.startswith('maas_batch_size_count{model="minilm"}'):
            counts["batches"] = float(line.split()[-1])
    assert counts["batches"] > counts["le1"], "no batch with more than one item was formed"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "nope", "input": "x"}, 404, "model"),
        ({"model": "minilm:9", "input": "x"}, 404, "model"),
        ({"model": "minilm", "input": []}, 400, "input"),
        ({"model": "minilm", "input": [""]}, 400, "input"),
        ({"model": "minilm", "input": "x", "encoding_format": "hex"}, 400, "encoding_format"),
        ({"model": "minilm", "input": "x", "dimensions": 128}, 400, "dimensions"),
        ({"model": "minilm", "input": [[1, 2, 99999999]]}, 400, "input"),
        ({"model": "affine", "input": "x"}, 400, "model"),
        ({"input": "x"}, 400, "model"),
    ],
)
def test_embedding_errors_use_openai_shape(
    serving_server: LiveServer,
    body: dict,  # type: ignore[type-arg]
    status: int,
    param: str,
) -> None:
    r = httpx.post(
        f"{serving_server.url}/v1/embeddings",
        headers={"Authorization": f"Bearer {serving_server.key}"},
        json=body,
    )
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param
    assert err["message"]


@pytest.mark.slow
def test_v1_models_lists_servable_models(serving_server: LiveServer) -> None:
    with openai.OpenAI(base_url=f"{serving_server.url}/v1", api_key=serving_server.key) as client:
        ids = {m.id for m in client.models.list()}
        assert {"minilm", "affine"} <= ids
        assert client.models.retrieve("minilm").id == "minilm"
