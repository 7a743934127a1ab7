"""The lifecycle end to end through the API, on real data and real subprocesses:

dataset -> train (a few steps from MiniLM) -> evaluate -> quantize (ONNX int8) -> the int8
version answers inference requests, and the lineage chain links every step.

The dataset, the fine-tuning and the evaluation are the session's ``reviews_lifecycle``
(tests/lifecycle.py: made once, through the CLI, and also read by the CLI walkthrough
test); this test goes on from a copy of that home through the API: what the evaluation
recorded, then a quantize job, the int8 version served over V2, its lineage and report.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from maas.api.app import create_app
from maas.config import Settings
from tests.lifecycle import Lifecycle, copy_home

A = "/admin/v1"


@pytest.fixture
def client(home: Path, reviews_lifecycle: Lifecycle) -> Iterator[TestClient]:
    copy_home(reviews_lifecycle.home, home)
    with TestClient(create_app(Settings(home=home, gc_grace_seconds=0))) as c:
        yield c


def _run_job(
    client: TestClient, auth: dict[str, str], kind: str, spec: dict[str, Any]
) -> dict[str, Any]:
    r = client.post(f"{A}/jobs", json={"kind": kind, "spec": spec, "seed": 0}, headers=auth)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = client.get(f"{A}/jobs/{job_id}", headers=auth).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            log = client.get(f"{A}/jobs/{job_id}/log", headers=auth).text
            assert job["status"] == "succeeded", (job, log[-2000:])
            return dict(job)
        time.sleep(0.2)
    raise AssertionError(f"{kind} job did not finish")


@pytest.mark.slow
def test_dataset_train_evaluate_quantize_then_serve_the_int8_version(
    client: TestClient, auth: dict[str, str]
) -> None:
    (trained,) = client.get(f"{A}/jobs", params={"kind": "train"}, headers=auth).json()
    assert trained["status"] == "succeeded" and trained["result_ref"] == "sentiment:1"
    (evaluated,) = client.get(f"{A}/jobs", params={"kind": "evaluate"}, headers=auth).json()
    assert evaluated["status"] == "succeeded"
    assert evaluated["spec"]["slice_column"] == "group"
    version = client.get(f"{A}/models/sentiment/versions/1", headers=auth).json()
    assert version["metrics"]["accuracy"] >= 0.8, version["metrics"]
    assert version["parent"] == "minilm:1"
    assert version["job_id"] == trained["id"]

    quantized = _run_job(client, auth, "quantize", {"model": "sentiment:1", "dataset": "reviews"})
    ref = quantized["result_ref"]
    int8 = client.get(f"{A}/models/{ref.replace(':', '/versions/')}", headers=auth).json()
    assert int8["format"] == "onnx"
    assert int8["task"] == "text-classification"
    assert int8["parent"] == "sentiment:1"
    assert int8["size_bytes"] < version["size_bytes"] / 2.5

    texts = ["the concert was wonderful", "that hotel was dreadful"]
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": texts}]}
    number = ref.split(":")[1]
    r = client.post(f"/v2/models/sentiment/versions/{number}/infer", json=body, headers=auth)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert outputs["label"]["data"] == ["pos", "neg"]

    lineage = client.get(f"{A}/models/sentiment/versions/{number}/lineage", headers=auth)
    assert lineage.status_code == 200, lineage.text
    chain = [v["ref"] if isinstance(v, dict) and "ref" in v else v for v in _refs(lineage.json())]
    assert chain[:3] == [ref, "sentiment:1", "minilm:1"]
    report = client.get(f"{A}/jobs/{quantized['id']}/report", headers=auth)
    assert report.status_code == 200
    assert "<html" in report.text.lower()


def _refs(body: Any) -> list[str]:
    items = body.get("chain", body.get("data", body)) if isinstance(body, dict) else body
    return [
        f"{i['model']}:{i['version']}" if isinstance(i, dict) and "model" in i else i for i in items
    ]
