"""Evaluation scores what is served: for an hf, an ONNX and an int8 version of one
classifier, the probabilities a real server answers equal those the evaluate job's
predictor computes, and the evaluate job's accuracy is the accuracy of the server's
answers on the same split."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from maas.config import Settings
from maas.jobs import evaluate, optimize
from maas.jobs.base import JobOutput
from maas.jobs.dataset_files import read_dataset, read_split
from maas.jobs.served import ServedPredictor
from maas.registry.store import Registry
from tests.e2e.conftest import LiveServer, start_server
from tests.jobs.ml_fixtures import LocalJobContext, make_ctx

pytestmark = pytest.mark.slow

VERSIONS = {"hf": 1, "onnx": 2, "int8": 3}


@pytest.fixture(scope="module")
def onnx_dir(
    tmp_path_factory: pytest.TempPathFactory, tiny_classifier_dir: Path, sentiment_dataset: Path
) -> Path:
    ctx = make_ctx(
        tmp_path_factory.mktemp("onnx"),
        "export",
        {"model": "clf", "dataset": "sentiment", "latency_runs": 1},
        {"clf": tiny_classifier_dir, "sentiment": sentiment_dataset},
    )
    optimize.export(ctx)
    return ctx.output_dir


@pytest.fixture(scope="module")
def dirs(
    tiny_classifier_dir: Path,
    onnx_dir: Path,
    int8_quantized: tuple[LocalJobContext, JobOutput],
) -> dict[str, Path]:
    return {"hf": tiny_classifier_dir, "onnx": onnx_dir, "int8": int8_quantized[0].output_dir}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, dirs: dict[str, Path]) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("served-home")
    registry = Registry(Settings(home=home))
    try:
        for name in VERSIONS:  # versions 1, 2, 3 in this order
            registry.push(dirs[name], "clf", task="text-classification")
    finally:
        registry.close()
    yield from start_server(home)


def served_probabilities(live: LiveServer, version: int, texts: list[str]) -> np.ndarray:
    rows = []
    with httpx.Client(headers={"Authorization": f"Bearer {live.key}"}, timeout=30) as http:
        for text in texts:  # one request each: the server runs a batch of one
            body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}
            r = http.post(f"{live.url}/v2/models/clf/versions/{version}/infer", json=body)
            assert r.status_code == 200, r.text
            outputs: dict[str, Any] = {o["name"]: o for o in r.json()["outputs"]}
            rows.append(outputs["probabilities"]["data"])
    return np.asarray(rows, dtype=np.float32)


@pytest.mark.parametrize("name", list(VERSIONS))
def test_the_served_and_the_evaluated_prediction_of_an_input_are_the_same(
    name: str, live: LiveServer, dirs: dict[str, Path], sentiment_dataset: Path
) -> None:
    records = read_split(read_dataset(sentiment_dataset), "test")
    texts = [r["text"] for r in records]
    served = served_probabilities(live, VERSIONS[name], texts)
    with ServedPredictor(dirs[name], "text-classification") as predictor:
        one_by_one = np.concatenate([predictor.predict_proba([t]) for t in texts])
        batched = predictor.predict_proba(texts)  # as the evaluate job runs it, padded
    np.testing.assert_allclose(one_by_one, served, rtol=0, atol=1e-6)
    # In a padded batch an fp32 answer stays put (padding is masked). Dynamic int8 picks
    # its activation scale per batch, padding included, so its answer moves a little with
    # what it is batched with: in the server as in the evaluation (0.005 seen here).
    np.testing.assert_allclose(batched, served, rtol=0, atol=0.02 if name == "int8" else 1e-5)
    if name != "int8":
        assert (batched.argmax(axis=1) == served.argmax(axis=1)).all()

    ctx = make_ctx(
        live.home / f"evaluate-{name}",
        "evaluate",
        {"model": "clf", "dataset": "sentiment", "latency_runs": 1},
        {"clf": dirs[name], "sentiment": sentiment_dataset},
    )
    metrics = evaluate.run(ctx).metrics
    labels = ["negative", "positive"]
    truth = [
        labels[int(r["label"])] if isinstance(r["label"], int) else r["label"] for r in records
    ]
    server_accuracy = float(
        np.mean([labels[int(i)] == t for i, t in zip(served.argmax(axis=1), truth, strict=True)])
    )
    assert metrics["accuracy"] == pytest.approx(server_accuracy, abs=1e-12)
