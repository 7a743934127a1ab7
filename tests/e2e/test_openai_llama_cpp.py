"""GGUF models on llama.cpp through the official ``openai`` client against a real server.

A tiny random Llama written as a Q8_0 GGUF here (no downloads) is pushed as it
is (a ``gguf`` version) and served by the llama.cpp runtime, whose decode loop
batches every running sequence. Its greedy output is checked against
llama-cpp-python's own single-sequence ``Llama.create_completion`` on the same
file, with the same attention kernel (no flash attention, as the runtime runs it).

Two quirks of llama-cpp-python's text, not of llama.cpp's tokens, are allowed
for: it decodes with ``errors="ignore"`` (bytes that never form a character
vanish) where maas sends U+FFFD for them, so texts are compared with U+FFFD
removed; and when the last token leaves a character unfinished it decodes
*past* ``max_tokens`` until the character is whole (its usage then says more
than ``max_tokens``), so there maas's text must be the start of its text.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import LiveServer, serve_pushed
from tests.gguf_helpers import CONTEXT, write_tiny_llama_gguf

openai = pytest.importorskip("openai")
llama_cpp = pytest.importorskip("llama_cpp")

PROMPTS = [
    f"the quick brown fox {i}" if i % 2 else f"what is the capital of france {i}" for i in range(16)
]
MAX = 24


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny.Q8_0.gguf"
    write_tiny_llama_gguf(path)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[LiveServer]:
    # Flash attention off: the tests below compare greedy output with llama.cpp's
    # own token for token, which its half-precision sums would blur (MAAS_FLASH_ATTENTION).
    env = {"MAAS_KV_CACHE_TOKENS": "4096", "MAAS_FLASH_ATTENTION": "false"}
    yield from serve_pushed(tmp_path_factory.mktemp("llama-home"), tiny_gguf, "tiny", env)


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[Any]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.key) as c:
        yield c


@pytest.fixture(scope="module")
def reference(tiny_gguf: Path) -> Any:
    """llama.cpp's own greedy completion of one prompt, one sequence at a time."""
    llm = llama_cpp.Llama(str(tiny_gguf), n_ctx=CONTEXT, flash_attn=False, verbose=False)

    def greedy(prompt: str, max_tokens: int = MAX) -> tuple[str, int]:
        out = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0)
        return str(out["choices"][0]["text"]), int(out["usage"]["completion_tokens"])

    return greedy


def _text(text: str) -> str:
    return text.replace("\ufffd", "")


def _same_greedy(ours: tuple[str, int], theirs: tuple[str, int], max_tokens: int) -> bool:
    (text, tokens), (expected, expected_tokens) = ours, theirs
    if expected_tokens <= max_tokens:
        # maas counts the end-of-generation token it stopped at; llama-cpp-python does not.
        return _text(text) == expected and tokens - expected_tokens in (0, 1)
    # llama-cpp-python went past max_tokens to finish a character (module docstring).
    return tokens == max_tokens and expected.startswith(_text(text))


def _metric(server: LiveServer, name: str, model: str = "tiny") -> float:
    response = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {server.key}"})
    for line in response.text.splitlines():
        if line.startswith(f'{name}{{model="{model}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.slow
def test_sixteen_concurrent_greedy_completions_equal_llama_cpp_one_at_a_time(
    client: Any, reference: Any
) -> None:
    expected = [reference(p) for p in PROMPTS]
    assert len(set(expected)) > 1

    def run(index: int) -> tuple[str, int]:
        prompt = PROMPTS[index]
        if index % 2:  # half of them streamed
            stream = client.completions.create(
                model="tiny",
                prompt=prompt,
                max_tokens=MAX,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = list(stream)
            text = "".join(c.choices[0].text for c in chunks if c.choices)
            return text, chunks[-1].usage.completion_tokens
        response = client.completions.create(
            model="tiny", prompt=prompt, max_tokens=MAX, temperature=0
        )
        return str(response.choices[0].text), response.usage.completion_tokens

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(run, range(len(PROMPTS))))
    differ = [i for i in range(len(PROMPTS)) if not _same_greedy(got[i], expected[i], MAX)]
    assert differ == [], [(got[i], expected[i]) for i in differ]


@pytest.mark.slow
def test_chat_stream_with_usage_has_the_openai_shape(client: Any) -> None:
    stream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hello world"}],
        max_tokens=MAX,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    body = [c for c in chunks if c.choices]
    assert body[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in body[:-1])
    final = chunks[-1]
    assert final.choices == []
    assert 0 < final.usage.completion_tokens <= MAX
    whole = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hello world"}],
        max_tokens=MAX,
        temperature=0,
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in body) == whole.choices[0].message.content
    )
    assert whole.usage.prompt_tokens == final.usage.prompt_tokens


@pytest.mark.slow
def test_n_three_greedy_choices_are_each_llama_cpps_answer(client: Any, reference: Any) -> None:
    response = client.completions.create(
        model="tiny", prompt=PROMPTS[3], max_tokens=MAX, temperature=0, n=3
    )
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert len({c.text for c in response.choices}) == 1
    per_choice = response.usage.completion_tokens // 3
    assert _same_greedy((response.choices[0].text, per_choice), reference(PROMPTS[3]), MAX)


@pytest.mark.slow
def test_same_seed_same_text_and_other_seeds_differ(client: Any) -> None:
    def sample(seed: int) -> str:
        response = client.completions.create(
            model="tiny", prompt="hello world", max_tokens=16, temperature=1.0, seed=seed
        )
        return str(response.choices[0].text)

    assert sample(7) == sample(7)
    assert len({sample(s) for s in (1, 2, 3, 4)}) > 1


@pytest.mark.slow
def test_stop_string_ends_the_text_before_it(client: Any) -> None:
    full = (
        client.completions.create(model="tiny", prompt=PROMPTS[5], max_tokens=32, temperature=0)
        .choices[0]
        .text
    )
    middle = next(
        i
        for i in range(len(full) // 2, len(full) - 2)
        if full[i : i + 2].strip() and "\ufffd" not in full[i : i + 2]
    )
    stop = full[middle : middle + 2]
    for stream in (False, True):
        response = client.completions.create(
            model="tiny",
            prompt=PROMPTS[5],
            max_tokens=32,
            temperature=0,
            stop=[stop],
            stream=stream,
        )
        if stream:
            chunks = [c for c in response if c.choices]
            text = "".join(c.choices[0].text for c in chunks)
            finish = chunks[-1].choices[0].finish_reason
        else:
            text, finish = response.choices[0].text, response.choices[0].finish_reason
        assert text == full[: full.index(stop)]
        assert finish == "stop"


@pytest.mark.slow
def test_logprobs_come_from_the_batched_loop(client: Any) -> None:
    response = client.chat.completions.create(
        model="tiny",
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
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)  # greedy: the top


# ------------------------------------------------------------ slow: SmolLM2


@pytest.mark.slow
def test_smollm2_sixteen_concurrent_greedy_answers_stay_within_the_measured_bound(
    smollm2_live: LiveServer, smollm2_gguf: Path
) -> None:
    """Batched greedy SmolLM2 (Q4_1) against llama.cpp's own, one sequence at a time.

    The server runs as configured by default (flash attention on); the reference
    without it, as llama.cpp's one-sequence path has always run here.

    Here batching changes llama.cpp's arithmetic: its Q4_1 matrix kernels sum in
    another order for a batch of rows than for one row, so logits move by up to
    ~1% and a near-tie can flip (llama.cpp's own batched prefill disagrees with
    its one-token decode the same way). Measured on this machine, 16 concurrent
    prompts x 16 tokens: 3 to 5 of 16 answers identical to the token, the others
    drifting after 3 to 14 tokens; one at a time (or the tiny Q8_0 model, whose
    kernels are batch-invariant) every token agrees. Tested bound: every answer
    starts with llama.cpp's first two tokens, and at least one of the 16 agrees
    with it to the last token.
    """
    live, path = smollm2_live, smollm2_gguf
    llm = llama_cpp.Llama(str(path), n_ctx=512, flash_attn=False, verbose=False)
    animals = "cat dog fox owl bee ant cow pig hen elk yak emu bat rat eel ram".split()  # noqa: SIM905
    prompts = [f"Once upon a time, a little {animal} lived in" for animal in animals]
    expected = []
    for prompt in prompts:
        tokens = []
        for token in llm.generate(llm.tokenize(prompt.encode(), add_bos=True), temp=0.0):
            if llm.token_eos() == token or len(tokens) == 16:
                break
            tokens.append(llm.detokenize([token]).decode("utf-8", "replace"))
        expected.append(tokens)
    with openai.OpenAI(base_url=f"{live.url}/v1", api_key=live.key) as smol:

        def run(prompt: str) -> list[str]:
            response = smol.completions.create(
                model="smollm2", prompt=prompt, max_tokens=16, temperature=0, logprobs=0
            )
            return list(response.choices[0].logprobs.tokens)

        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(run, prompts))
    agree = [
        next((i for i, (a, b) in enumerate(zip(g, e, strict=False)) if a != b), len(e))
        for g, e in zip(got, expected, strict=True)
    ]
    assert min(agree) >= 2, agree
    assert any(n == len(e) for n, e in zip(agree, expected, strict=True)), agree


@pytest.mark.slow
def test_a_client_that_disconnects_frees_its_slot(smollm2_live: LiveServer) -> None:
    # SmolLM2, not the tiny model: it must still be generating when the client leaves
    # (a seeded story of 400 tokens takes seconds here; the tiny model's, milliseconds).
    server = smollm2_live
    body = {
        "model": "smollm2",
        "prompt": "Once upon a time, in a small village,",
        "max_tokens": 400,
        "stream": True,
        "temperature": 0.9,
        "seed": 1,
    }
    with httpx.stream(
        "POST",
        f"{server.url}/v1/completions",
        json=body,
        headers={"Authorization": f"Bearer {server.key}"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        # Kept referenced: a dropped line iterator closes the connection (a disconnect).
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("data:"):
                break
        assert _metric(server, "maas_generation_running", "smollm2") == 1
        assert _metric(server, "maas_kv_cache_usage_ratio", "smollm2") > 0
    deadline = time.monotonic() + 10
    while _metric(server, "maas_generation_running", "smollm2") != 0:
        assert time.monotonic() < deadline, "the disconnected stream still holds its slot"
        time.sleep(0.05)
    assert _metric(server, "maas_generation_waiting", "smollm2") == 0
    # The thread count the decode loop chose is shown (one core or more, never none).
    assert _metric(server, "maas_llama_threads", "smollm2") >= 1
    # The slot and its KV cells are free again; the model still answers.
    deadline = time.monotonic() + 10
    while _metric(server, "maas_kv_cache_usage_ratio", "smollm2") != 0:
        assert time.monotonic() < deadline, "the disconnected stream still holds KV cells"
        time.sleep(0.05)
    again = httpx.post(
        f"{server.url}/v1/completions",
        json={"model": "smollm2", "prompt": "Hello", "max_tokens": 4},
        headers={"Authorization": f"Bearer {server.key}"},
        timeout=30,
    )
    assert again.status_code == 200, again.text


SUPPORT_RULES = "You are the support assistant of a small bookshop. " + " ".join(
    f"Rule {i}: never promise a delivery date and refer order {i} to the order page."
    for i in range(16)
)


@pytest.mark.slow
def test_a_shared_system_prompt_is_read_once(smollm2_live: LiveServer, smollm2_gguf: Path) -> None:
    """The second chat with the same ~300-token system prompt reads only its own question.

    (Its TTFT is measured in benchmarks/generation.py; tests assert no timings.)
    """
    server, path = smollm2_live, smollm2_gguf
    system_tokens = len(
        llama_cpp.Llama(str(path), n_ctx=512, verbose=False, vocab_only=True).tokenize(
            SUPPORT_RULES.encode(), add_bos=False, special=False
        )
    )
    assert system_tokens >= 300
    before = _metric(server, "maas_prefix_cache_cached_tokens_total", "smollm2")
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.key) as client:
        answers = []
        for question in ("Where is my order?", "Do you ship to Canada?"):
            reply = client.chat.completions.create(
                model="smollm2",
                messages=[
                    {"role": "system", "content": SUPPORT_RULES},
                    {"role": "user", "content": question},
                ],
                max_tokens=8,
                temperature=0,
            )
            answers.append(reply.choices[0].message.content)
    reused = _metric(server, "maas_prefix_cache_cached_tokens_total", "smollm2") - before
    assert reused >= system_tokens
    assert all(answers)


def test_usage_says_how_many_prompt_tokens_came_from_the_prefix_cache(client: Any) -> None:
    system = "the quick brown fox jumps over the lazy dog, what is the capital of france? " * 4

    def chat(question: str, stream: bool) -> Any:
        asked = {
            "model": "tiny",
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": question},
            ],
            "max_tokens": 4,
            "temperature": 0,
        }
        if not stream:
            return client.chat.completions.create(**asked).usage
        events = client.chat.completions.create(
            **asked, stream=True, stream_options={"include_usage": True}
        )
        return [e.usage for e in events if e.usage][-1]

    first = chat("hello world", stream=False)
    second = chat("paris is the", stream=False)
    third = chat("hello model", stream=True)
    # At most the chat template's opening is shared with earlier tests' chats.
    assert first.prompt_tokens_details.cached_tokens < 10
    # The system turn and the template around it, at least (the questions differ).
    for later in (second, third):
        assert later.prompt_tokens_details.cached_tokens > 60
        assert later.prompt_tokens_details.cached_tokens < later.prompt_tokens


@pytest.fixture(scope="module")
def tight_server(
    tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path
) -> Iterator[LiveServer]:
    """SmolLM2 with room for one sequence: it is still generating when the next asks."""
    env = {
        "MAAS_MAX_RUNNING_SEQUENCES": "1",
        "MAAS_MAX_QUEUED_REQUESTS": "0",
        "MAAS_KV_CACHE_TOKENS": "2048",
    }
    yield from serve_pushed(tmp_path_factory.mktemp("llama-tight"), smollm2_gguf, "smollm2", env)


@pytest.mark.slow
def test_a_full_model_answers_429_and_takes_requests_again_after(
    tight_server: LiveServer,
) -> None:
    headers = {"Authorization": f"Bearer {tight_server.key}"}
    body = {
        "model": "smollm2",
        "prompt": "Once upon a time, in a small village,",
        "max_tokens": 400,
        "stream": True,
        "seed": 1,
    }
    with httpx.stream(
        "POST", f"{tight_server.url}/v1/completions", json=body, headers=headers, timeout=30
    ) as response:
        assert response.status_code == 200
        # Kept referenced: a dropped line iterator closes the connection (a disconnect).
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("data:"):
                break
        refused = httpx.post(
            f"{tight_server.url}/v1/completions",
            json={"model": "smollm2", "prompt": "x", "max_tokens": 2},
            headers=headers,
        )
        assert refused.status_code == 429, refused.text
        assert refused.headers["retry-after"]
    deadline = time.monotonic() + 10
    while True:
        again = httpx.post(
            f"{tight_server.url}/v1/completions",
            json={"model": "smollm2", "prompt": "x", "max_tokens": 2},
            headers=headers,
        )
        if again.status_code == 200:
            break
        assert again.status_code == 429 and time.monotonic() < deadline, again.text
        time.sleep(0.05)
