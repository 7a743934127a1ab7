"""Chat and text completions through the official ``openai`` client against a real server.

Tiny random Llama and GPT-2 models (built here, no downloads) make the
generated text meaningless but deterministic under greedy decoding, so every
answer can be checked against Hugging Face ``generate`` on the same prompt.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from maas.config import Settings
from maas.registry.store import Registry
from tests.e2e.conftest import LiveServer, start_server
from tests.helpers import make_tiny_llm

openai = pytest.importorskip("openai")

PROMPTS = [f"Hello world {i} one two" if i % 2 else f"The quick fox {i}" for i in range(16)]
MAX = 16


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("llms")
    return {
        "llama": make_tiny_llm(root / "llama", arch="llama", seed=1),
        "gpt2": make_tiny_llm(root / "gpt2", arch="gpt2", seed=2),
        "plain": make_tiny_llm(root / "plain", arch="gpt2", seed=3, chat=False),
    }


def _home(tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]) -> Path:
    home = tmp_path_factory.mktemp("gen-home")
    registry = Registry(Settings(home=home))
    try:
        for name, path in models.items():
            registry.push(path, name, task="text-generation")
    finally:
        registry.close()
    return home


@pytest.fixture(scope="module")
def gen_server(
    tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]
) -> Iterator[LiveServer]:
    yield from start_server(_home(tmp_path_factory, models))


@pytest.fixture(scope="module")
def client(gen_server: LiveServer) -> Iterator[Any]:
    with openai.OpenAI(base_url=f"{gen_server.url}/v1", api_key=gen_server.key) as c:
        yield c


@pytest.fixture(scope="module")
def reference(models: dict[str, Path]) -> Any:
    """Greedy continuations from plain transformers ``generate``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = {
        name: (
            AutoTokenizer.from_pretrained(path),
            AutoModelForCausalLM.from_pretrained(path).eval(),
        )
        for name, path in models.items()
    }

    def greedy(name: str, prompt_ids: list[int], max_new: int = MAX) -> tuple[str, list[int]]:
        tokenizer, model = loaded[name]
        with torch.inference_mode():
            out = model.generate(
                torch.tensor([prompt_ids]),
                attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                max_new_tokens=max_new,
                do_sample=False,
                pad_token_id=0,
            )
        new = out[0, len(prompt_ids) :].tolist()
        return tokenizer.decode(new, skip_special_tokens=True), new

    def chat_ids(name: str, content: str) -> list[int]:
        tokenizer, _ = loaded[name]
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def text_ids(name: str, prompt: str) -> list[int]:
        return list(loaded[name][0](prompt)["input_ids"])

    return greedy, chat_ids, text_ids


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_greedy_chat_equals_transformers_generate(client: Any, reference: Any, name: str) -> None:
    greedy, chat_ids, _ = reference
    response = client.chat.completions.create(
        model=name,
        messages=[{"role": "user", "content": "Hello world"}],
        max_tokens=MAX,
        temperature=0,
    )
    expected, tokens = greedy(name, chat_ids(name, "Hello world"))
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected
    assert response.usage.prompt_tokens == len(chat_ids(name, "Hello world"))
    assert response.usage.completion_tokens == len(tokens)
    assert response.usage.total_tokens == response.usage.prompt_tokens + len(tokens)
    assert choice.finish_reason == ("length" if len(tokens) == MAX else "stop")


@pytest.mark.slow
def test_text_completion_non_streaming_and_streaming(client: Any, reference: Any) -> None:
    greedy, _, text_ids = reference
    expected, tokens = greedy("llama", text_ids("llama", "The quick fox"))
    response = client.completions.create(
        model="llama", prompt="The quick fox", max_tokens=MAX, temperature=0
    )
    assert response.object == "text_completion"
    assert response.choices[0].text == expected
    assert response.usage.completion_tokens == len(tokens)
    stream = client.completions.create(
        model="llama",
        prompt="The quick fox",
        max_tokens=MAX,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == len(tokens)


@pytest.mark.slow
def test_chat_stream_has_the_openai_shape(client: Any, reference: Any) -> None:
    greedy, chat_ids, _ = reference
    expected, tokens = greedy("gpt2", chat_ids("gpt2", "stream me"))
    stream = client.chat.completions.create(
        model="gpt2",
        messages=[{"role": "user", "content": "stream me"}],
        max_tokens=MAX,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert {c.model for c in chunks} == {"gpt2:1"}  # the version that answered, usage included
    assert chunks[0].choices[0].delta.role == "assistant"
    body = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in body) == expected
    assert body[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in body[:-1])
    assert all(c.usage is None for c in body)
    final = chunks[-1]
    assert final.choices == []
    assert final.usage.prompt_tokens == len(chat_ids("gpt2", "stream me"))
    assert final.usage.completion_tokens == len(tokens)


@pytest.mark.slow
def test_sixteen_concurrent_streams_each_get_their_own_text(client: Any, reference: Any) -> None:
    greedy, _, text_ids = reference
    expected = [greedy("llama", text_ids("llama", p))[0] for p in PROMPTS]

    def run(prompt: str) -> str:
        stream = client.completions.create(
            model="llama", prompt=prompt, max_tokens=MAX, temperature=0, stream=True
        )
        return "".join(c.choices[0].text for c in stream if c.choices)

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(run, PROMPTS))
    assert got == expected


@pytest.mark.slow
def test_stop_sequences_end_the_text_before_them(client: Any, reference: Any) -> None:
    greedy, _, text_ids = reference
    full, _ = greedy("llama", text_ids("llama", "Hello world 3 one two"), 32)
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop.strip(), full
    response = client.completions.create(
        model="llama", prompt="Hello world 3 one two", max_tokens=32, temperature=0, stop=[stop]
    )
    assert response.choices[0].text == full[: full.index(stop)]
    assert response.choices[0].finish_reason == "stop"


@pytest.mark.slow
def test_same_seed_same_output(client: Any) -> None:
    def sample(seed: int) -> str:
        response = client.completions.create(
            model="llama", prompt="The quick fox", max_tokens=12, temperature=1.0, seed=seed
        )
        return str(response.choices[0].text)

    assert sample(7) == sample(7)
    assert len({sample(s) for s in (1, 2, 3, 4)}) > 1


@pytest.mark.slow
def test_logprobs_on_chat(client: Any) -> None:
    response = client.chat.completions.create(
        model="llama",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.logprob - 1e-6  # greedy picks the top one


@pytest.mark.slow
def test_n_choices(client: Any) -> None:
    response = client.chat.completions.create(
        model="llama", messages=[{"role": "user", "content": "hi"}], max_tokens=5, n=3
    )
    assert [c.index for c in response.choices] == [0, 1, 2]


def _metric(url: str, key: str, name: str, model: str) -> float:
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"}).text
    for line in text.splitlines():
        if line.startswith(f'{name}{{model="{model}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.slow
def test_a_client_that_disconnects_frees_its_slot(gen_server: LiveServer) -> None:
    url, key = gen_server.url, gen_server.key
    body = {
        "model": "gpt2",
        "prompt": "The quick fox",
        "max_tokens": 200,
        "stream": True,
        "temperature": 0.9,
        "stop": ["zzzzzz"],
    }
    # A random tiny model sampling at 0.9 can draw its end token within the first few
    # tokens, ending the stream before the gauge is read: then start another one.
    for _attempt in range(5):
        with httpx.stream(
            "POST",
            f"{url}/v1/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        ) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            for line in lines:
                if line.startswith("data:"):
                    break
            if _metric(url, key, "maas_generation_running", "gpt2") == 1:
                break  # leaving the block now disconnects while it generates
    else:
        raise AssertionError("no stream was still generating after its first token")
    deadline = time.monotonic() + 10
    while _metric(url, key, "maas_generation_running", "gpt2") != 0:
        assert time.monotonic() < deadline, "the disconnected stream still holds its slot"
        time.sleep(0.05)
    assert _metric(url, key, "maas_generation_waiting", "gpt2") == 0
    assert _metric(url, key, "maas_time_to_first_token_seconds_count", "gpt2") >= 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "llama"}, 400, "messages"),
        ({"model": "llama", "messages": []}, 400, "messages"),
        ({"model": "llama", "messages": [{"role": "wizard", "content": "x"}]}, 400, None),
        (
            {"model": "llama", "messages": [{"role": "user", "content": "x"}], "temperature": 3},
            400,
            "temperature",
        ),
        ({"model": "llama", "messages": [{"role": "user", "content": "x"}], "n": 0}, 400, "n"),
        (
            {
                "model": "llama",
                "messages": [{"role": "user", "content": "x"}],
                "stop": ["a", "b", "c", "d", "e"],
            },
            400,
            "stop",
        ),
        (
            {
                "model": "llama",
                "messages": [{"role": "user", "content": "x"}],
                "presence_penalty": 0.5,
            },
            400,
            "presence_penalty",
        ),
        (
            {
                "model": "llama",
                "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_object"},
            },
            400,
            "response_format",
        ),
        (
            {
                "model": "llama",
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f"}}],
            },
            400,
            "tools",
        ),
        (
            {
                "model": "llama",
                "messages": [{"role": "user", "content": "x"}],
                "max_tokens": 100000,
            },
            400,
            "max_tokens",
        ),
        (
            {
                "model": "llama",
                "messages": [{"role": "user", "content": "x"}],
                "stream_options": {"include_usage": True},
            },
            400,
            "stream_options",
        ),
        (
            {"model": "llama", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
            400,
            "top_logprobs",
        ),
        ({"model": "plain", "messages": [{"role": "user", "content": "x"}]}, 400, "messages"),
        ({"model": "ghost", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
        ({"model": "llama", "messages": "hello"}, 400, "messages"),
    ],
)
def test_malformed_chat_requests_are_4xx_with_openai_errors(
    gen_server: LiveServer, body: dict[str, Any], status: int, param: str | None
) -> None:
    r = httpx.post(
        f"{gen_server.url}/v1/chat/completions",
        content=json.dumps(body),
        headers={"Authorization": f"Bearer {gen_server.key}", "Content-Type": "application/json"},
    )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if param is not None:
        assert (error["param"] or "").split(".")[0] == param, error


@pytest.mark.slow
def test_garbage_bodies_are_400(gen_server: LiveServer) -> None:
    for raw in (
        b"{not json",
        b"[]",
        b'{"model": 5, "prompt": "x"}',
        b'{"model": "llama", "prompt": ""}',
    ):
        r = httpx.post(
            f"{gen_server.url}/v1/completions",
            content=raw,
            headers={
                "Authorization": f"Bearer {gen_server.key}",
                "Content-Type": "application/json",
            },
        )
        assert r.status_code == 400, (raw, r.text)


@pytest.fixture(scope="module")
def tight_server(
    tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]
) -> Iterator[LiveServer]:
    env = {"MAAS_MAX_RUNNING_SEQUENCES": "1", "MAAS_MAX_QUEUED_REQUESTS": "0"}
    yield from start_server(_home(tmp_path_factory, models), env)


@pytest.mark.slow
def test_queue_overflow_is_429_with_retry_after(tight_server: LiveServer) -> None:
    """One running slot and no queue: of simultaneous requests, the extra ones get 429."""
    url, key = tight_server.url, tight_server.key
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "gpt2", "prompt": "The quick fox", "max_tokens": 200, "stop": ["zzzzzz"]}

    def call(_: int) -> httpx.Response:
        return httpx.post(f"{url}/v1/completions", json=body, headers=headers, timeout=60)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(call, range(8)))
    statuses = sorted(r.status_code for r in responses)
    assert 200 in statuses
    assert 429 in statuses
    assert set(statuses) <= {200, 429}
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["type"] == "rate_limit_error"
