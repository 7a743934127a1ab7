"""V2 classification answers give ``probabilities`` in the model's own label order (what
``config.json``'s ``id2label`` says and the ``label`` output names), for every format."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.api.test_deployments import push
from tests.helpers import make_tiny_bert

BODY = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}]}


@pytest.mark.parametrize("labels", [("pos", "neg"), ("zebra", "apple", "mango")])
def test_probabilities_follow_the_models_label_order(
    client: TestClient, auth: dict[str, str], tmp_path: Path, labels: tuple[str, ...]
) -> None:
    push(client, auth, make_tiny_bert(tmp_path / "clf", classifier=True, labels=labels))
    r = client.post("/v2/models/clf/infer", json=BODY, headers=auth)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    probabilities = outputs["probabilities"]
    assert probabilities["shape"] == [2, len(labels)]
    rows = [probabilities["data"][i * len(labels) : (i + 1) * len(labels)] for i in range(2)]
    for row, top in zip(rows, outputs["label"]["data"], strict=True):
        assert labels[row.index(max(row))] == top  # column i is labels[i]
