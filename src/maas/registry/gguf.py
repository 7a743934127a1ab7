"""Import GGUF files (llama.cpp's format): kept as they are, or dequantized to safetensors.

A GGUF file holds quantized weights *and* everything needed to use them:
the architecture's hyper-parameters, the tokenizer (vocabulary, merges,
special tokens) and usually a chat template, all as metadata.

By default a GGUF file is stored as it is, as a ``gguf`` version of task
``text-generation`` (its header — architecture, quantization, context length —
in the version's metadata) and served by llama.cpp with the weights still
quantized (``maas.runtimes.llama_cpp``). With ``dequantize`` it is converted
once into a Hugging Face directory instead, for what needs float weights
(training, export, the transformers runtime):

1. the header is read (``gguf.GGUFReader`` maps the file; nothing is
   dequantized) to check it and to record its architecture, quantization
   and context length, and the whole file is hashed;
2. transformers loads it (``from_pretrained(..., gguf_file=...)``),
   *dequantizing every tensor to float32*, and rebuilds the tokenizer from
   the metadata;
3. the model, the tokenizer (with its chat template) and the generation
   config (end-of-sequence ids) are saved as a plain directory:
   ``config.json``, ``model.safetensors``, ``tokenizer.json``,
   ``tokenizer_config.json``, ``chat_template.jinja``,
   ``generation_config.json``.

The result is an ordinary ``hf`` version of task ``text-generation``. Either
way the source file's digest and header are kept in ``params["source"]``.

Conversion is CPU-bound (about 20 s for a 135M-parameter model) and takes
and returns plain values (paths in, a frozen dataclass out), so a server can
run :func:`convert_gguf` in a process pool, off the event loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maas.errors import ConflictError, InvalidRequestError, NotFoundError
from maas.registry.refs import validate_model_name

if TYPE_CHECKING:
    from maas.registry.schemas import VersionInfo
    from maas.registry.store import Registry

GGUF_MAGIC = b"GGUF"
TASK = "text-generation"
_HASH_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class GgufInfo:
    """What a GGUF header says about the model it holds (read without loading weights)."""

    architecture: str
    name: str | None
    quantization: str
    context_length: int | None
    tensor_count: int
    tensor_types: dict[str, int] = field(default_factory=dict)
    parameter_count: int = 0
    chat_template: str | None = None
    end_token_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class GgufConversion:
    """The outcome of :func:`convert_gguf`: where the directory is and what it came from."""

    out_dir: Path
    file: str
    sha256: str
    size_bytes: int
    info: GgufInfo
    chat_template: bool
    seconds: float

    def lineage(self) -> dict[str, Any]:
        """The source record stored as ``params["source"]`` of the imported version."""
        return {
            "format": "gguf",
            "file": self.file,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "architecture": self.info.architecture,
            "name": self.info.name,
            "quantization": self.info.quantization,
            "context_length": self.info.context_length,
            "tensor_types": self.info.tensor_types,
            "chat_template": self.chat_template,
            "dtype": "float32",
        }

    def describe(self, description: str = "") -> str:
        """A version description that names the source file and its digest."""
        source = (
            f"imported from {self.file} (GGUF {self.info.architecture} "
            f"{self.info.quantization}, sha256:{self.sha256})"
        )
        return f"{description} — {source}" if description else source


def source_record(path: Path, info: GgufInfo, sha256: str, *, dtype: str) -> dict[str, Any]:
    """What ``params["source"]`` records of a GGUF file a version came from."""
    return {
        "format": "gguf",
        "file": path.name,
        "sha256": sha256,
        "size_bytes": path.stat().st_size,
        "architecture": info.architecture,
        "name": info.name,
        "quantization": info.quantization,
        "context_length": info.context_length,
        "tensor_types": info.tensor_types,
        "chat_template": info.chat_template is not None,
        "dtype": dtype,
    }


def describe_source(path: Path, info: GgufInfo, sha256: str, description: str = "") -> str:
    """A version description that names the source file and its digest."""
    source = (
        f"imported from {path.name} (GGUF {info.architecture} {info.quantization}, sha256:{sha256})"
    )
    return f"{description} — {source}" if description else source


def is_gguf_file(path: Path) -> bool:
    """Whether ``path`` is a regular file starting with the GGUF magic bytes."""
    if not path.is_file():
        return False
    with path.open("rb") as f:
        return f.read(len(GGUF_MAGIC)) == GGUF_MAGIC


def _not_gguf(path: Path) -> InvalidRequestError:
    return InvalidRequestError(
        f"{path.name} is not a GGUF file (it does not start with the GGUF magic bytes)",
        param="path",
    )


def read_gguf_info(path: Path) -> GgufInfo:
    """Read and check a GGUF header; raise ``InvalidRequestError`` for anything else."""
    if not is_gguf_file(path):
        raise _not_gguf(path)
    from gguf import GGMLQuantizationType, GGUFReader, LlamaFileType

    try:
        reader = GGUFReader(path)
    except (ValueError, IndexError, KeyError, OSError) as exc:
        raise InvalidRequestError(f"{path.name} is a corrupt GGUF file: {exc}") from exc

    def value(key: str) -> Any:
        found = reader.fields.get(key)
        return None if found is None else found.contents()

    architecture = value("general.architecture")
    if not isinstance(architecture, str):
        raise InvalidRequestError(f"{path.name} has no general.architecture in its GGUF header")
    # Tensor types of the weight matrices: norms and biases stay F32 in every
    # GGUF, so they would only dilute the count.
    matrix_types = Counter(
        t.tensor_type.name for t in reader.tensors if len(t.shape) >= 2 and t.n_elements > 0
    )
    file_type = value("general.file_type")
    quantization = (
        matrix_types.most_common(1)[0][0] if matrix_types else GGMLQuantizationType.F32.name
    )
    # A file type newer than this gguf package keeps the answer of the tensor count.
    with contextlib.suppress(ValueError):
        if isinstance(file_type, int):
            quantization = LlamaFileType(file_type).name.removeprefix("MOSTLY_")
    quantization = quantization.removeprefix("ALL_")
    context = value(f"{architecture}.context_length")
    template = value("tokenizer.chat_template")
    end_ids = []
    for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"):
        token_id = value(key)
        if isinstance(token_id, int) and token_id not in end_ids:
            end_ids.append(token_id)
    name = value("general.name")
    return GgufInfo(
        architecture=architecture,
        name=name if isinstance(name, str) else None,
        quantization=quantization,
        context_length=int(context) if isinstance(context, int) else None,
        tensor_count=len(reader.tensors),
        tensor_types=dict(Counter(t.tensor_type.name for t in reader.tensors)),
        parameter_count=int(sum(int(t.n_elements) for t in reader.tensors)),
        chat_template=template if isinstance(template, str) else None,
        end_token_ids=tuple(end_ids),
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def convert_gguf(gguf_path: Path, out_dir: Path) -> GgufConversion:
    """Convert one GGUF file into a float32 Hugging Face safetensors directory at ``out_dir``.

    ``out_dir`` must not exist or be empty. The architecture must be one that
    transformers' GGUF loader knows and that has a causal-LM head.
    """
    started = time.monotonic()
    info = read_gguf_info(gguf_path)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InvalidRequestError(f"{out_dir} is not empty", param="out_dir")
    sha256 = file_sha256(gguf_path)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    directory, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer: Any = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        # dequantize=True: a dense float32 model, never GGUF blocks kept packed
        # (which transformers could not save as safetensors).
        model: Any = AutoModelForCausalLM.from_pretrained(
            directory,
            gguf_file=name,
            dtype=torch.float32,
            quantization_config=GgufConfig(dequantize=True),
        )
    except (ValueError, KeyError, NotImplementedError, RuntimeError) as exc:
        raise InvalidRequestError(
            f"transformers cannot load {name} (GGUF architecture {info.architecture!r}) "
            f"as a causal language model: {exc}",
            param="path",
        ) from exc
    if getattr(model, "hf_quantizer", None) is not None:  # pragma: no cover - transformers drift
        raise InvalidRequestError(f"{name} was loaded with packed GGUF weights; cannot save it")

    if not tokenizer.chat_template and info.chat_template:
        tokenizer.chat_template = info.chat_template
    if info.context_length:
        tokenizer.model_max_length = info.context_length
    # llama.cpp stops at end-of-turn (EOT) as well as EOS; so must generate().
    generation = model.generation_config
    ends = list(info.end_token_ids)
    if generation.eos_token_id is None and tokenizer.eos_token_id is not None:
        ends.insert(0, int(tokenizer.eos_token_id))
    if ends:
        generation.eos_token_id = ends[0] if len(ends) == 1 else ends
    if generation.pad_token_id is None and tokenizer.pad_token_id is not None:
        generation.pad_token_id = int(tokenizer.pad_token_id)

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    kept_template = _saved_chat_template(out_dir)
    if info.chat_template and not kept_template:  # pragma: no cover - transformers drift
        raise InvalidRequestError(f"the chat template of {name} was lost in conversion")
    return GgufConversion(
        out_dir=out_dir,
        file=name,
        sha256=sha256,
        size_bytes=gguf_path.stat().st_size,
        info=info,
        chat_template=kept_template,
        seconds=round(time.monotonic() - started, 2),
    )


def _saved_chat_template(out_dir: Path) -> bool:
    """Whether the saved tokenizer carries a chat template (either place transformers uses)."""
    jinja = out_dir / "chat_template.jinja"
    if jinja.is_file() and jinja.read_text(encoding="utf-8").strip():
        return True
    config = out_dir / "tokenizer_config.json"
    if config.is_file():
        return bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
    return False


@contextmanager
def converted_gguf(gguf_path: Path, tmp_root: Path) -> Iterator[GgufConversion]:
    """Convert into a fresh directory under ``tmp_root``, removed on exit."""
    tmp_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=tmp_root, prefix="gguf-"))
    try:
        yield convert_gguf(gguf_path, staging / "model")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def import_gguf(
    registry: Registry,
    gguf_path: Path,
    name: str,
    *,
    dequantize: bool = False,
    description: str = "",
    tags: dict[str, Any] | None = None,
    parent: str | None = None,
    created_by: str | None = None,
    on_converted: Callable[[GgufConversion], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> VersionInfo:
    """Store ``gguf_path`` as the next ``text-generation`` version of ``name``.

    As a ``gguf`` version (the file itself, served by llama.cpp), or with
    ``dequantize`` as an ``hf`` version converted to float32 safetensors.
    """
    # Everything that can be refused is refused before the (slow) hashing or conversion.
    validate_model_name(name)
    try:
        existing = registry.get_model(name)
    except NotFoundError:
        pass
    else:
        if existing.task != TASK:
            raise ConflictError(
                f"model {name!r} has task {existing.task!r}; a GGUF import is {TASK!r}",
                param="name",
            )
    if parent is not None:
        registry.get_version(parent)
    info = read_gguf_info(gguf_path)
    if not dequantize:
        sha256 = file_sha256(gguf_path)
        return registry.push(
            gguf_path,
            name,
            task=TASK,
            description=describe_source(gguf_path, info, sha256, description),
            params={"source": source_record(gguf_path, info, sha256, dtype=info.quantization)},
            tags=tags,
            parent=parent,
            created_by=created_by,
            on_bytes=on_bytes,
        )
    with converted_gguf(gguf_path, registry.settings.tmp_dir) as conversion:
        if on_converted is not None:
            on_converted(conversion)
        return registry.push(
            conversion.out_dir,
            name,
            task=TASK,
            description=conversion.describe(description),
            params={"source": conversion.lineage()},
            tags=tags,
            parent=parent,
            created_by=created_by,
            on_bytes=on_bytes,
        )


def import_dequantized_upload(
    registry: Registry,
    upload: Path,
    name: str,
    *,
    filename: str | None,
    task: str | None = None,
    description: str = "",
    tags: dict[str, Any] | None = None,
    parent: str | None = None,
    created_by: str | None = None,
) -> VersionInfo:
    """An uploaded GGUF file (``?dequantize=true``), converted and stored as an ``hf`` version.

    The upload is renamed to its ``filename`` (recorded as the source file) in a
    staging directory first; anything but one GGUF file is refused before any work.
    """
    if task not in (None, TASK):
        raise InvalidRequestError(f"a GGUF file holds a {TASK} model, not {task}", param="task")
    if not is_gguf_file(upload):
        raise InvalidRequestError(
            "dequantize applies to one GGUF file sent as the body (with ?filename=model.gguf)",
            param="dequantize",
        )
    staging = Path(tempfile.mkdtemp(dir=registry.settings.tmp_dir, prefix="gguf-upload-"))
    try:
        target = staging / Path(filename or "model.gguf").name
        shutil.copyfile(upload, target)
        return import_gguf(
            registry,
            target,
            name,
            dequantize=True,
            description=description,
            tags=tags,
            parent=parent,
            created_by=created_by,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
