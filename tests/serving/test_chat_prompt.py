"""A conversation with tools as a GGUF model's template reads it (real llama.cpp runtime).

A template that reads ``tools`` gets the functions and the calls in
transformers' shape; any other template gets them written into the system
prompt in the tool-call text format.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from maas.config import Settings
from maas.registry.store import Registry
from maas.runtimes.base import RuntimeContext
from maas.runtimes.llama_cpp import LlamaCppTextGenerationRuntime
from maas.serving.chat_prompt import encode_conversation
from maas.serving.generation_types import GenerationRequest, Message, Tool
from tests.gguf_helpers import write_tiny_llama_gguf

pytest.importorskip("llama_cpp")

TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTOOLS:{% for t in tools %} {{ t.function.name }}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}CALL {{ c.function | tojson }}{% endfor %}"
    "{% elif m.role == 'tool' %}RESULT {{ m.tool_call_id }} {{ m.content }}"
    "{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
REQUEST = GenerationRequest(
    messages=(
        Message("user", "weather in paris"),
        Message("assistant", "", tool_calls=(("c1", "get_weather", '{"city": "paris"}'),)),
        Message("tool", "sunny", tool_call_id="c1"),
    ),
    tools=(Tool("get_weather", "the weather", json.dumps({"type": "object"})),),
)


def _prompt(tmp: Path, template: str | None) -> str:
    path = tmp / "tiny.gguf"
    write_tiny_llama_gguf(path, context=1024, **({"chat_template": template} if template else {}))
    registry = Registry(Settings(home=tmp / "home"))
    try:
        version = registry.push(path, "tiny")
    finally:
        registry.close()

    async def main() -> str:
        executor = ThreadPoolExecutor(1)
        runtime = LlamaCppTextGenerationRuntime(
            RuntimeContext(model_dir=path, version=version, executor=executor, options={})
        )
        await runtime.load()
        try:
            ids = encode_conversation(runtime, REQUEST)
            return runtime.tokenizer.decode(ids, skip_special_tokens=False)
        finally:
            await runtime.unload()
            executor.shutdown()

    return asyncio.run(main())


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    yield (
        _prompt(tmp_path_factory.mktemp("tools-template"), TOOLS_TEMPLATE),
        _prompt(tmp_path_factory.mktemp("plain-template"), None),
    )


def test_a_template_that_reads_tools_renders_them_itself(prompts: tuple[str, str]) -> None:
    native, _ = prompts
    assert native.startswith("<|im_start|>system\nTOOLS: get_weather<|im_end|>")
    assert 'CALL {"name": "get_weather", "arguments": {"city": "paris"}}' in native
    assert "<|im_start|>tool\nRESULT c1 sunny<|im_end|>" in native
    assert "<tool_call>" not in native


def test_another_template_gets_the_tools_in_the_system_prompt(prompts: tuple[str, str]) -> None:
    _, plain = prompts
    assert plain.startswith("<|im_start|>system\n# Tools")
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "paris"}}</tool_call>' in plain
    assert "<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>" in plain
