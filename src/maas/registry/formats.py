"""Recognise what kind of model a directory holds and read its basic metadata.

Five layouts are understood:

* ``hf``: a Hugging Face directory, ``config.json`` plus ``*.safetensors``.
* ``onnx``: one ``*.onnx`` graph (optionally with external-data files).
* ``safetensors``: the maas-native layout, ``maas.json`` plus ``*.safetensors``.
* ``diffusers``: a diffusers pipeline, ``model_index.json`` plus one subfolder
  per component (unet, vae, text encoder, tokenizer, scheduler), safetensors.
* ``gguf``: one llama.cpp ``*.gguf`` file (weights, usually quantized, with its
  tokenizer and chat template), kept as it is and served by llama.cpp.

Another, ``dataset`` (``dataset.json`` plus JSONL splits), is not a model but
a versioned dataset stored the same content-addressed way.

Only headers are read (safetensors' JSON header, ONNX graph without external
data), so detection stays cheap for multi-GB weights.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maas.errors import InvalidRequestError
from maas.registry.gguf import TASK as GGUF_TASK
from maas.registry.gguf import is_gguf_file, read_gguf_info

TASKS = (
    "embeddings",
    "text-classification",
    "text-generation",
    "image-classification",
    "tensor",
    "automatic-speech-recognition",
    "text-to-speech",
    "text-to-image",
    # Not a model: a versioned dataset (see maas.jobs.datasets); never served.
    "dataset",
)
FORMATS = ("hf", "onnx", "safetensors", "gguf", "diffusers", "dataset")
DATASET_TASK = "dataset"

# ONNX TensorProto element types -> Open Inference Protocol V2 datatypes.
_ONNX_TO_V2 = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    8: "BYTES",
    9: "BOOL",
    10: "FP16",
    11: "FP64",
    12: "UINT32",
    13: "UINT64",
    16: "BF16",
}
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


@dataclass(slots=True)
class DetectedFormat:
    format: str
    task_hint: str | None
    metadata: dict[str, Any] = field(default_factory=dict)


def validate_task(task: str) -> str:
    if task not in TASKS:
        raise InvalidRequestError(
            f"unknown task {task!r}; expected one of: {', '.join(TASKS)}", param="task"
        )
    return task


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor name -> dtype, shape, offsets)."""
    with path.open("rb") as f:
        raw_len = f.read(8)
        if len(raw_len) != 8:
            raise InvalidRequestError(f"{path.name} is not a safetensors file (too short)")
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > _MAX_SAFETENSORS_HEADER:
            raise InvalidRequestError(f"{path.name} is not a safetensors file (bad header)")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidRequestError(f"{path.name} has a corrupt safetensors header") from exc
    if not isinstance(header, dict):
        raise InvalidRequestError(f"{path.name} has a corrupt safetensors header")
    return header


def safetensors_parameter_count(path: Path) -> int:
    """Count parameters from a safetensors header without reading the tensors."""
    total = 0
    for name, info in safetensors_header(path).items():
        if name == "__metadata__":
            continue
        total += math.prod(info.get("shape", []))
    return total


# Speech models told apart by their config: Whisper-family sequence-to-sequence models
# transcribe, VITS (MMS-TTS) speaks.
_SPEECH_RECOGNITION_TYPES = ("whisper",)
_TEXT_TO_SPEECH_ARCHITECTURES = ("VitsModel",)


def _diffusers_format(root: Path, files: list[Path], size: int) -> DetectedFormat:
    """A diffusers pipeline: ``model_index.json`` naming its parts, each in a subfolder.

    Only safetensors weights are taken (the unsafe-format check refuses pickles).
    """
    index = _read_json(root / "model_index.json")
    pipeline = index.get("_class_name")
    if not isinstance(pipeline, str):
        raise InvalidRequestError("model_index.json names no pipeline class (_class_name)")
    components = sorted(
        name
        for name, value in index.items()
        if not name.startswith("_") and isinstance(value, list) and value[0] is not None
    )
    weights = [p for p in files if p.suffix == ".safetensors"]
    if not weights:
        raise InvalidRequestError(
            "a diffusers pipeline must hold its weights as .safetensors files", param="path"
        )
    return DetectedFormat(
        "diffusers",
        "text-to-image",
        {
            "pipeline": pipeline,
            "components": components,
            "parameter_count": sum(safetensors_parameter_count(p) for p in weights),
            "size_bytes": size,
        },
    )


def _task_from_hf_config(root: Path, config: dict[str, Any]) -> str | None:
    if (root / "modules.json").is_file() or (root / "sentence_bert_config.json").is_file():
        return "embeddings"
    for arch in config.get("architectures") or []:
        if arch.endswith("ForSequenceClassification"):
            return "text-classification"
        if arch.endswith(("ForCausalLM", "LMHeadModel")):
            return "text-generation"
        if arch.endswith("ForImageClassification"):
            return "image-classification"
        if (
            arch.endswith(("ForSpeechSeq2Seq", "ForConditionalGeneration"))
            and config.get("model_type") in _SPEECH_RECOGNITION_TYPES
        ):
            return "automatic-speech-recognition"
        if arch in _TEXT_TO_SPEECH_ARCHITECTURES:
            return "text-to-speech"
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequestError(f"{path.name} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidRequestError(f"{path.name} must hold a JSON object")
    return doc


def _onnx_signature(path: Path) -> dict[str, Any]:
    import onnx  # heavy import, only when an ONNX file is pushed

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise InvalidRequestError(f"{path.name} is not a valid ONNX model: {exc}") from exc

    def describe(values: Any) -> list[dict[str, Any]]:
        out = []
        for v in values:
            tensor = v.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
            out.append(
                {
                    "name": v.name,
                    "datatype": _ONNX_TO_V2.get(tensor.elem_type, "UNKNOWN"),
                    "shape": shape,
                }
            )
        return out

    initializer_names = {init.name for init in model.graph.initializer}
    params = sum(math.prod(init.dims) for init in model.graph.initializer)
    return {
        "inputs": [i for i in describe(model.graph.input) if i["name"] not in initializer_names],
        "outputs": describe(model.graph.output),
        "opset": max(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None
        ),
        "parameter_count": params,
        "producer": model.producer_name,
    }


def metadata_for_task(metadata: dict[str, Any], task: str | None) -> dict[str, Any]:
    """The metadata to store for a version served as ``task``.

    ``inputs``/``outputs`` are what V2 metadata advertises. For a ``tensor``
    model they are the graph's own; for a task model (an ONNX text classifier
    made by ``quantize`` or ``export``) the runtime tokenizes text or decodes
    images in front of the graph, so the graph's tensors (``input_ids`` ->
    ``logits``) are not what a request sends: they are kept as
    ``graph_inputs``/``graph_outputs`` and the runtime describes the rest.
    """
    if task == "tensor" or "inputs" not in metadata:
        return metadata
    kept = {k: v for k, v in metadata.items() if k not in ("inputs", "outputs")}
    kept["graph_inputs"] = metadata["inputs"]
    kept["graph_outputs"] = metadata.get("outputs", [])
    return kept


def _gguf_format(path: Path, size: int) -> DetectedFormat:
    """A GGUF file as it is: what its header says, quantization included."""
    info = read_gguf_info(path)
    metadata = {
        "architecture": info.architecture,
        "name": info.name,
        "quantization": info.quantization,
        "context_length": info.context_length,
        "tensor_types": info.tensor_types,
        "parameter_count": info.parameter_count,
        "chat_template": info.chat_template is not None,
        "file": path.name,
        "size_bytes": size,
    }
    return DetectedFormat("gguf", GGUF_TASK, metadata)


def detect_format(root: Path) -> DetectedFormat:
    """Detect the layout of a model directory (or a single ``.onnx`` file)."""
    if root.is_file():
        if root.suffix.lower() == ".gguf" or is_gguf_file(root):
            return _gguf_format(root, root.stat().st_size)
        if root.suffix.lower() != ".onnx":
            raise InvalidRequestError(
                f"cannot tell the format of {root.name}: a single file must be an .onnx graph; "
                "for other models push their directory",
                param="path",
            )
        meta = _onnx_signature(root)
        return DetectedFormat("onnx", "tensor", meta)

    files = [p for p in root.rglob("*") if p.is_file()]
    safetensors = sorted(p for p in files if p.suffix == ".safetensors")
    onnx_files = sorted(p for p in files if p.suffix.lower() == ".onnx")
    gguf_files = sorted(p for p in files if p.suffix.lower() == ".gguf")
    size = sum(p.stat().st_size for p in files)

    if (root / "dataset.json").is_file() and not safetensors and not onnx_files:
        # A dataset (maas.jobs.datasets layout): its description becomes the metadata.
        return DetectedFormat(
            "dataset",
            DATASET_TASK,
            {"dataset": _read_json(root / "dataset.json"), "size_bytes": size},
        )

    if (root / "model_index.json").is_file():
        return _diffusers_format(root, files, size)

    if (root / "maas.json").is_file():
        spec = _read_json(root / "maas.json")
        if not safetensors and not onnx_files:
            raise InvalidRequestError("maas.json found but no .safetensors weights beside it")
        task = spec.get("task")
        if task is not None:
            validate_task(str(task))
        params = sum(safetensors_parameter_count(p) for p in safetensors)
        return DetectedFormat(
            "safetensors",
            task,
            {"spec": spec, "parameter_count": params, "size_bytes": size},
        )

    if (root / "config.json").is_file() and safetensors:
        config = _read_json(root / "config.json")
        params = sum(safetensors_parameter_count(p) for p in safetensors)
        return DetectedFormat(
            "hf",
            _task_from_hf_config(root, config),
            {
                "architectures": config.get("architectures") or [],
                "model_type": config.get("model_type"),
                "parameter_count": params,
                "size_bytes": size,
            },
        )

    if len(gguf_files) == 1 and not safetensors and not onnx_files:
        return _gguf_format(gguf_files[0], size)

    if len(onnx_files) == 1:
        meta = _onnx_signature(onnx_files[0])
        meta["size_bytes"] = size
        meta["graph"] = onnx_files[0].relative_to(root).as_posix()
        return DetectedFormat("onnx", "tensor", meta)

    if (root / "config.json").is_file() and any(
        p.suffix in (".bin", ".pt", ".pth", ".ckpt") for p in files
    ):
        config = _read_json(root / "config.json")
        return DetectedFormat(
            "hf",
            _task_from_hf_config(root, config),
            {
                "architectures": config.get("architectures") or [],
                "size_bytes": size,
                "unsafe_weights": True,
            },
        )

    raise InvalidRequestError(
        "could not detect the model format: expected a Hugging Face directory "
        "(config.json + *.safetensors), one .onnx file, one .gguf file, "
        "or maas.json + *.safetensors",
        param="path",
    )
