"""``GET /admin/v1/datasets/{name}/preview``: the first rows of a split, as stored, for a key
that may read the dataset; and the console's jobs page showing them, escaped."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

from tests.console.helpers import sign_in

ROWS = [{"text": f"<b>review {i}</b>", "label": "pos" if i % 2 else "neg"} for i in range(30)]


def push_dataset(client: TestClient, tmp_path: Path) -> None:
    root = tmp_path / "reviews"
    root.mkdir()
    meta = {"kind": "text", "label_names": ["neg", "pos"], "slice_columns": []}
    (root / "dataset.json").write_text(json.dumps(meta))
    for split, rows in (("train", ROWS), ("test", ROWS[:4])):
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    registry = client.app.state.registry  # type: ignore[attr-defined]
    registry.push(root, "reviews", task="dataset")


def test_a_preview_gives_the_first_rows_of_a_split(
    client: TestClient, auth: dict[str, str], tmp_path: Path
) -> None:
    push_dataset(client, tmp_path)
    r = client.get("/admin/v1/datasets/reviews/preview", params={"limit": 5}, headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dataset"] == "reviews:1" and body["split"] == "train"
    assert body["rows"] == ROWS[:5] and body["total"] == 30
    r = client.get("/admin/v1/datasets/reviews/preview?split=test&version=1", headers=auth)
    assert r.json()["rows"] == ROWS[:4]
    bad = client.get("/admin/v1/datasets/reviews/preview?split=holdout", headers=auth)
    assert bad.status_code == 400 and "holdout" in bad.json()["error"]["message"]
    assert client.get("/admin/v1/datasets/nope/preview", headers=auth).status_code == 404
    too_many = client.get("/admin/v1/datasets/reviews/preview?limit=501", headers=auth)
    assert too_many.status_code == 400


def test_the_console_jobs_page_previews_a_dataset_as_text(
    client: TestClient, auth: dict[str, str], admin_key: str, tmp_path: Path
) -> None:
    push_dataset(client, tmp_path)
    sign_in(client, admin_key)
    page = client.get("/console/jobs", params={"preview": "reviews", "split": "train"})
    assert page.status_code == 200
    assert "&lt;b&gt;review 0&lt;/b&gt;" in page.text and "<b>review 0</b>" not in page.text
    assert "first 20 of 30" in page.text
