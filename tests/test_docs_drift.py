"""The docs say what the code does: portable snippets, no stale claims, no grammar slips."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from maas.registry.store import Registry

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)  # "```python run" too
# The one way a snippet may name the default address: as the fallback of MAAS_URL.
URL_FROM_ENV = 'os.environ.get("MAAS_URL", "http://127.0.0.1:8000")'


def _blocks(language: str) -> list[tuple[str, str]]:
    return [
        (path.name, body)
        for path in DOCS
        for lang, body in FENCE.findall(path.read_text(encoding="utf-8"))
        if lang == language
    ]


def test_python_snippets_take_the_key_and_address_from_the_environment() -> None:
    blocks = _blocks("python")
    assert blocks, "no python snippets found: the scan is broken"
    for name, body in blocks:
        assert "/root/" not in body and "admin.key" not in body, (name, body)
        assert "8000" not in body.replace(URL_FROM_ENV, ""), (name, body)
        if "api_key" in body or "Authorization" in body:
            assert 'os.environ["MAAS_API_KEY"]' in body, (name, body)


def test_security_doc_does_not_call_chat_and_completions_unserved() -> None:
    text = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    assert "not served yet" not in text
    assert "| `POST` | `/v1/chat/completions` | infer |" in text


def test_no_message_puts_an_article_before_a_task_name() -> None:
    """``f"is a {task} model"`` reads "is a embeddings model" or "a image-classification"."""
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "src" / "maas").rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"\ban? \{[^}]*task\b[^}]*\}", line)
    ]
    assert offenders == []


def test_a_model_of_the_wrong_task_is_named_with_its_task(
    client: TestClient, auth: dict[str, str], registry: Registry, hf_dir: Path
) -> None:
    registry.push(hf_dir, "clf", task="text-classification")
    r = client.post("/v1/embeddings", json={"model": "clf", "input": ["hi"]}, headers=auth)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"] == "model clf is for text-classification, not embeddings"
