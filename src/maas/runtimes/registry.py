"""Which Runtime class serves a (task, format) pair.

Built-ins are imported lazily (torch and onnxruntime are heavy). Third-party
packages register more under the ``maas.runtimes`` entry-point group with the
name ``<task>:<format>``; those take precedence over built-ins.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from maas.errors import InvalidRequestError
from maas.runtimes.base import Runtime

ENTRY_POINT_GROUP = "maas.runtimes"

BUILTIN: dict[tuple[str, str], str] = {
    ("embeddings", "hf"): "maas.runtimes.embeddings:HFEmbeddingRuntime",
    ("text-classification", "hf"): "maas.runtimes.text_classification:HFTextClassificationRuntime",
    (
        "image-classification",
        "hf",
    ): "maas.runtimes.image_classification:HFImageClassificationRuntime",
    ("tensor", "onnx"): "maas.runtimes.onnx:OnnxTensorRuntime",
    ("text-classification", "onnx"): "maas.runtimes.onnx_text:OnnxTextClassificationRuntime",
    ("embeddings", "onnx"): "maas.runtimes.onnx_text:OnnxEmbeddingRuntime",
    ("text-generation", "hf"): "maas.runtimes.text_generation:HFTextGenerationRuntime",
    ("text-generation", "gguf"): "maas.runtimes.llama_cpp:LlamaCppTextGenerationRuntime",
    (
        "automatic-speech-recognition",
        "hf",
    ): "maas.runtimes.speech_recognition:WhisperSpeechRecognitionRuntime",
    ("text-to-speech", "hf"): "maas.runtimes.text_to_speech:VitsTextToSpeechRuntime",
    ("text-to-image", "diffusers"): "maas.runtimes.text_to_image:DiffusersTextToImageRuntime",
}


def _import(target: str) -> type[Runtime]:
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, Runtime)):
        raise TypeError(f"{target} is not a maas Runtime subclass")
    return cls


def runtime_class(task: str, fmt: str) -> type[Runtime]:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == f"{task}:{fmt}":
            cls = ep.load()
            if isinstance(cls, type) and issubclass(cls, Runtime):
                return cls
    target = BUILTIN.get((task, fmt))
    if target is None:
        served = ", ".join(f"{t}/{f}" for t, f in sorted(BUILTIN))
        raise InvalidRequestError(
            f"no runtime serves task {task!r} in format {fmt!r} (built in: {served})",
            param="model",
        )
    return _import(target)
