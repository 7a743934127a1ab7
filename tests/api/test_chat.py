"""``/v1/chat/completions`` and ``/v1/completions`` in process, on a real tiny model.

The wire tests with the ``openai`` client and a real server are in
``tests/e2e/test_openai_chat.py``; these check the route's translation, the
refusals that must come before the first byte, PII and token limits, error
events, and that a client who goes away frees its sequence.
"""

from __future__ import annotations

import ast
import inspect
import json
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient

from maas.api import chat
from maas.api.app import create_app
from maas.config import Settings
from maas.errors import UnavailableError
from maas.registry.schemas import VersionInfo
from maas.registry.store import Registry
from maas.serving.generation import Chunk, GenerationEvent, GenerationRequest, Prepared
from tests.helpers import make_tiny_llm

PROMPT = "The quick fox"  # greedy decoding of model "m" runs past 200 tokens without an end
PHONE = "13812345678"


def test_the_route_module_touches_no_runtime_or_engine() -> None:
    source = inspect.getsource(chat)
    assert "runtime" not in source.lower()
    assert "engine" not in source.lower()
    imported = {
        node.module
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom) and node.module
    }
    serving = {name for name in imported if name.startswith("maas.serving")}
    assert serving == {"maas.serving.context", "maas.serving.dataplane", "maas.serving.generation"}
    assert not any(name.startswith(("maas.runtimes", "maas.security")) for name in imported)


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("chat")
    model = make_tiny_llm(root / "m", arch="gpt2", seed=2)
    # The same weights without a chat template.
    plain = make_tiny_llm(root / "plain", arch="gpt2", seed=2, chat=False)
    home = root / "home"
    registry = Registry(Settings(home=home))
    try:
        registry.push(model, "m", task="text-generation")
        registry.push(plain, "plain", task="text-generation")
    finally:
        registry.close()
    return home


@pytest.fixture(scope="module")
def client(home: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(home=home))) as c:
        yield c


@pytest.fixture(scope="module")
def auth(client: TestClient, home: Path) -> dict[str, str]:
    return {"Authorization": f"Bearer {Settings(home=home).admin_key_file.read_text().strip()}"}


def _key(client: TestClient, auth: dict[str, str], **policy: Any) -> dict[str, str]:
    r = client.post("/admin/v1/keys", json={"name": "chat", **policy}, headers=auth)
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['key']}"}


def _events(text: str) -> list[Any]:
    """The ``data:`` payloads of an SSE body, JSON-decoded except ``[DONE]``."""
    out: list[Any] = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def _gauge(client: TestClient, name: str) -> float:
    metrics = client.app.state.metrics  # type: ignore[attr-defined]
    return float(metrics.registry.get_sample_value(name, {"model": "m"}) or 0.0)


# ---------------------------------------------------------------- behaviour


@pytest.mark.slow
def test_chat_answers_in_openai_shape_with_usage(client: TestClient, auth: dict[str, str]) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 8,
        "temperature": 0,
    }
    r = client.post("/v1/chat/completions", json=body, headers=auth)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["object"] == "chat.completion"
    assert answer["system_fingerprint"] == "maas-m:1"
    (choice,) = answer["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("stop", "length")
    usage = answer["usage"]
    assert 0 < usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    r = client.post(
        "/v1/chat/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
        headers=auth,
    )
    assert r.status_code == 200
    events = _events(r.text)
    assert events[-1] == "[DONE]"
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    body_events = [e for e in events[:-1] if e["choices"]]
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in body_events)
    assert streamed == choice["message"]["content"]  # greedy: the same text
    assert body_events[-1]["choices"][0]["finish_reason"] == choice["finish_reason"]
    assert events[-2]["choices"] == [] and events[-2]["usage"] == usage


@pytest.mark.slow
def test_completions_give_n_choices_with_logprobs(client: TestClient, auth: dict[str, str]) -> None:
    body = {"model": "m", "prompt": PROMPT, "max_tokens": 4, "n": 2, "logprobs": 2}
    r = client.post("/v1/completions", json=body, headers=auth)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert [c["index"] for c in answer["choices"]] == [0, 1]
    for choice in answer["choices"]:
        logprobs = choice["logprobs"]
        assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == 4
        # The legacy format keys alternatives by their text: two token ids that
        # decode to the same text (common in a random tiny vocabulary) share a key.
        assert all(1 <= len(top) <= 2 for top in logprobs["top_logprobs"])
    assert answer["usage"]["completion_tokens"] == 8


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/chat/completions", {"model": "plain"}, 400, "messages"),
        ("/v1/chat/completions", {"model": "ghost"}, 404, "model"),
        ("/v1/chat/completions", {"model": "m", "max_tokens": 100_000}, 400, "max_tokens"),
        ("/v1/completions", {"model": "m", "prompt": "x " * 400}, 400, "prompt"),
        ("/v1/completions", {"model": "m", "prompt": ""}, 400, "prompt"),
    ],
)
def test_refusals_come_before_the_first_byte(
    client: TestClient,
    auth: dict[str, str],
    path: str,
    body: dict[str, Any],
    status: int,
    param: str,
) -> None:
    if path.endswith("chat/completions"):
        body = {"messages": [{"role": "user", "content": "hi"}], **body}
    r = client.post(path, json={**body, "stream": True}, headers=auth)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param


@pytest.mark.slow
def test_the_token_rate_limit_counts_the_whole_budget_up_front(
    client: TestClient, auth: dict[str, str]
) -> None:
    key = _key(client, auth, tpm_limit=60)
    body = {"model": "m", "prompt": PROMPT, "max_tokens": 20, "n": 3, "stream": True}
    r = client.post("/v1/completions", json=body, headers=key)
    assert r.status_code == 429, r.text  # prompt + 3 x 20 > 60 before anything is generated
    assert r.json()["error"]["type"] == "rate_limit_error"
    r = client.post("/v1/completions", json={**body, "n": 1}, headers=key)
    assert r.status_code == 200


@pytest.mark.slow
def test_input_pii_is_redacted_or_blocked_by_the_key_policy(
    client: TestClient, auth: dict[str, str]
) -> None:
    def prompt_tokens(headers: dict[str, str], prompt: str) -> int:
        body = {"model": "m", "prompt": prompt, "max_tokens": 1}
        r = client.post("/v1/completions", json=body, headers=headers)
        assert r.status_code == 200, r.text
        return int(r.json()["usage"]["prompt_tokens"])

    with_pii = f"call {PHONE} now"
    redacted = prompt_tokens(_key(client, auth, pii_policy="redact:input"), with_pii)
    assert redacted == prompt_tokens(auth, "call [PHONE] now")
    assert redacted != prompt_tokens(auth, with_pii)

    blocking = _key(client, auth, pii_policy="block")
    body = {"model": "m", "messages": [{"role": "user", "content": with_pii}], "stream": True}
    r = client.post("/v1/chat/completions", json=body, headers=blocking)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "pii_blocked"
    assert PHONE not in r.text


@pytest.mark.slow
def test_an_error_mid_stream_becomes_an_error_event(
    client: TestClient, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def failing(
        version: VersionInfo, request: GenerationRequest
    ) -> AsyncGenerator[GenerationEvent, None]:
        yield Prepared(3, 5)
        yield Chunk("partial", None, 1)
        raise UnavailableError("the model engine stopped")

    monkeypatch.setattr(client.app.state.dataplane.host, "generate", failing)  # type: ignore[attr-defined]
    body = {"model": "m", "prompt": PROMPT, "stream": True}
    r = client.post("/v1/completions", json=body, headers=auth)
    assert r.status_code == 200
    events = _events(r.text)
    assert events[0]["choices"][0]["text"] == "partial"
    assert events[1]["error"]["message"] == "the model engine stopped"
    assert events[1]["error"]["code"] == "generation_failed"
    assert events[2:] == ["[DONE]"]


def test_line_separators_in_generated_text_stay_inside_their_event(
    client: TestClient, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """JSON leaves NEL, U+2028 and U+2029 raw; line-based SSE readers (str.splitlines, as
    ``_events`` here; httpx's iter_lines) break lines there, so they must be escaped."""
    text = "a\x85b\u2028c\u2029d"

    async def generating(
        version: VersionInfo, request: GenerationRequest
    ) -> AsyncGenerator[GenerationEvent, None]:
        yield Prepared(3, 5)
        yield Chunk(text, "length", 1)

    monkeypatch.setattr(client.app.state.dataplane.host, "generate", generating)  # type: ignore[attr-defined]
    body = {"model": "m", "prompt": PROMPT, "stream": True}
    r = client.post("/v1/completions", json=body, headers=auth)
    assert r.status_code == 200
    events = _events(r.text)
    assert events[0]["choices"][0]["text"] == text
    assert events[1:] == ["[DONE]"]


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 2])
def test_a_client_that_disconnects_mid_stream_frees_its_sequences(
    client: TestClient, auth: dict[str, str], n: int
) -> None:
    """Raw ASGI: the client reads the first event, then goes away (``http.disconnect``)."""
    body = json.dumps(
        {
            "model": "m",
            "prompt": PROMPT,
            "max_tokens": 200,
            "temperature": 0,
            "stream": True,
            "n": n,
        }
    ).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/completions",
        "raw_path": b"/v1/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", auth["Authorization"].encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }

    async def visit() -> tuple[list[int], float, float]:
        first_event = anyio.Event()
        gone = anyio.Event()
        delivered = False
        statuses: list[int] = []

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])
            elif message.get("body", b"").startswith(b"data: {"):
                first_event.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(client.app, scope, receive, send)
            with anyio.fail_after(60):
                await first_event.wait()
                for _ in range(10_000):  # the second sequence's first token may lag
                    if _gauge(client, "maas_generation_running") >= n:
                        break
                    await anyio.sleep(0.005)
            running = _gauge(client, "maas_generation_running")
            gone.set()
        return statuses, running, _gauge(client, "maas_generation_running")

    statuses, running, after = client.portal.call(visit)  # type: ignore[union-attr]
    assert statuses == [200]
    assert running == n
    assert after == 0  # freed by the time the request is over, not when GC gets to it
    assert _gauge(client, "maas_generation_waiting") == 0
