"""Predictors: one interface (:class:`Predictor`) over the model formats the jobs measure,
a Hugging Face text classifier, an ONNX text classifier, a Hugging Face image classifier,
each returning class probabilities; and the mapping of a model's labels to a dataset's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from maas.errors import InvalidRequestError
from maas.jobs.dataset_files import Dataset
from maas.registry.formats import detect_format
from maas.runtimes.base import sequence_limit


class Predictor(Protocol):
    labels: list[str]

    def predict_proba(self, items: Sequence[Any]) -> np.ndarray:
        """(len(items), len(labels)) float32 probabilities, rows summing to 1."""
        ...


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)  # (batch, labels)
    e = np.exp(shifted)
    return np.asarray(e / e.sum(axis=-1, keepdims=True), dtype=np.float32)


def config_labels(config: Any) -> list[str]:
    return [str(config.id2label[i]) for i in range(int(config.num_labels))]


def text_max_length(config: Any, tokenizer: Any) -> int:
    """The serving runtimes' truncation rule (``runtimes.base.sequence_limit``)."""
    return sequence_limit(getattr(config, "max_position_embeddings", None), tokenizer, 512)


class HFTextPredictor:
    """A transformers sequence classifier in eager PyTorch (what the hf runtime serves)."""

    def __init__(self, model: Any, tokenizer: Any, max_length: int | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.labels = config_labels(model.config)
        self.max_length = max_length or text_max_length(model.config, tokenizer)

    @classmethod
    def from_dir(cls, path: Path) -> HFTextPredictor:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForSequenceClassification.from_pretrained(str(path))
        return cls(model, tokenizer)

    def predict_proba(self, items: Sequence[Any]) -> np.ndarray:
        import torch

        enc = self.tokenizer(
            [str(t) for t in items],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        with torch.inference_mode():
            logits = self.model(**enc).logits  # (batch, labels)
        return softmax(logits.float().numpy())


class OnnxTextPredictor:
    """An ONNX text classifier directory (model.onnx + tokenizer + config.json) on ONNX Runtime.

    Feeds the graph the int64 tokenizer outputs it declares (``input_ids``,
    ``attention_mask``, and ``token_type_ids`` if present) and reads ``logits``.
    """

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort  # type: ignore[import-untyped]
        import torch
        from transformers import AutoConfig, AutoTokenizer

        graphs = sorted(path.glob("*.onnx"))
        if len(graphs) != 1:
            raise InvalidRequestError(f"expected one .onnx graph in the version, found {graphs}")
        config = AutoConfig.from_pretrained(str(path))
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.labels = config_labels(config)
        self.max_length = text_max_length(config, self.tokenizer)
        options = ort.SessionOptions()
        # Same thread count as torch in this process, so latency comparisons are fair.
        options.intra_op_num_threads = threads or torch.get_num_threads()
        self.session = ort.InferenceSession(
            str(graphs[0]), options, providers=["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]

    def predict_proba(self, items: Sequence[Any]) -> np.ndarray:
        enc = self.tokenizer(
            [str(t) for t in items],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="np",
        )
        feed = {}
        for name in self.input_names:
            value = enc.get(name)
            if value is None and name == "token_type_ids":
                value = np.zeros_like(enc["input_ids"])
            if value is None:
                raise InvalidRequestError(f"the ONNX graph wants input {name!r}")
            feed[name] = np.asarray(value, dtype=np.int64)  # (batch, seq)
        (logits,) = self.session.run(["logits"], feed)  # (batch, labels)
        return softmax(np.asarray(logits, dtype=np.float32))


class HFImagePredictor:
    """A transformers image classifier, preprocessed exactly as the serving runtime does."""

    def __init__(self, model: Any, preprocess: Any) -> None:
        self.model = model.eval()
        self.preprocess = preprocess
        self.labels = config_labels(model.config)

    @classmethod
    def from_dir(cls, path: Path) -> HFImagePredictor:
        from transformers import AutoModelForImageClassification

        config_path = path / "preprocessor_config.json"
        doc = json.loads(config_path.read_text()) if config_path.is_file() else {}
        model = AutoModelForImageClassification.from_pretrained(str(path))
        return cls.from_config_doc(model, doc)

    @classmethod
    def from_config_doc(cls, model: Any, doc: dict[str, Any]) -> HFImagePredictor:
        """A predictor for an in-memory model and a ``preprocessor_config.json`` document."""
        from maas.runtimes.image_classification import ImagePreprocessing

        return cls(model, ImagePreprocessing.from_config(doc))

    def pixels(self, items: Sequence[Any]) -> np.ndarray:
        from PIL import Image

        from maas.runtimes.image_classification import to_rgb

        arrays = []
        for item in items:
            with Image.open(item) as image:
                arrays.append(self.preprocess(to_rgb(image)))  # (3, H, W)
        return np.stack(arrays)  # (batch, 3, H, W)

    def predict_proba(self, items: Sequence[Any]) -> np.ndarray:
        import torch

        pixels = torch.from_numpy(self.pixels(items))
        with torch.inference_mode():
            logits = self.model(pixel_values=pixels).logits  # (batch, labels)
        return softmax(logits.float().numpy())


def load_predictor(model_dir: Path, dataset: Dataset) -> tuple[Predictor, str]:
    """The predictor for a version directory, and the version's format (hf | onnx)."""
    fmt = detect_format(model_dir).format
    if fmt == "onnx":
        if dataset.kind != "text":
            raise InvalidRequestError("ONNX versions can be evaluated on text datasets only")
        return OnnxTextPredictor(model_dir), fmt
    if fmt != "hf":
        raise InvalidRequestError(f"cannot evaluate a {fmt!r} version; expected hf or onnx")
    if dataset.kind == "image":
        return HFImagePredictor.from_dir(model_dir), fmt
    return HFTextPredictor.from_dir(model_dir), fmt


def label_mapping(model_labels: Sequence[str], dataset_labels: Sequence[str]) -> np.ndarray:
    """Column j of the model's output -> index of the same label in the dataset.

    By name when both name the same labels; by position when the model's labels
    are the generic ``LABEL_<i>`` or otherwise differ but count the same.
    """
    if sorted(model_labels) == sorted(dataset_labels):
        return np.array([list(dataset_labels).index(label) for label in model_labels])
    if len(model_labels) == len(dataset_labels):
        return np.arange(len(model_labels))
    raise InvalidRequestError(
        f"the model predicts {len(model_labels)} labels {list(model_labels)}, "
        f"the dataset has {len(dataset_labels)} {list(dataset_labels)}"
    )


def predict_dataset_proba(
    predictor: Predictor,
    items: Sequence[Any],
    dataset_labels: Sequence[str],
    *,
    batch_size: int = 32,
    on_batch: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """(n, len(dataset_labels)) probabilities in the dataset's label order."""
    mapping = label_mapping(predictor.labels, dataset_labels)
    out = np.zeros((len(items), len(dataset_labels)), dtype=np.float32)
    total = max(1, -(-len(items) // batch_size))
    for b, start in enumerate(range(0, len(items), batch_size)):
        probs = predictor.predict_proba(items[start : start + batch_size])  # (batch, model labels)
        out[start : start + len(probs), mapping] = probs
        if on_batch is not None:
            on_batch(b + 1, total)
    return out
