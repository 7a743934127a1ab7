"""Text classification and embeddings from ONNX graphs (e.g. int8 versions made by quantize).

The version directory holds ``model.onnx`` (or another ``*.onnx``), the
tokenizer files and ``config.json`` (``id2label`` for classifiers). The graph
takes ``input_ids`` and ``attention_mask`` (and ``token_type_ids`` when it
declares it), int64, shaped (batch, seq); a classifier's first output is the
logits (batch, labels), an encoder's is the last hidden state (batch, seq,
hidden), mean-pooled and L2-normalised here as the HF runtime does.

Threads stay fixed (``RuntimeContext.torch_threads`` per session) rather than
following the batcher's budget: ONNX Runtime fixes a session's intra-op
threads when the session is created, so following load would take a second
session per model, with a second copy of the weights. Measured on MiniLM fp32
(2 cores, quiet): 2 threads instead of 1 save 0.9 ms on a lone batch of 1
(2.8 -> 1.9 ms) and 7 ms on a batch of 8, but ONNX Runtime's pool spins, and
with other processes on the cores the 2-thread session ran 1.5-3x slower
than the 1-thread one. The batcher's length grouping applies as for torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from maas.runtimes.base import Runtime, TensorSpec, estimated_tokens, sequence_limit
from maas.runtimes.embeddings import Embedding
from maas.runtimes.text_classification import Classification


class _OnnxText(Runtime):
    formats = ("onnx",)

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self._session: Any = None
        self._tokenizer: Any = None
        self._feeds: list[str] = []
        self._max_length = 512
        self._bytes = 0
        self._config: dict[str, Any] = {}

    async def load(self) -> None:
        await self.run(self._load_sync)

    def _load_sync(self) -> None:
        import onnxruntime as ort  # type: ignore[import-untyped]
        from transformers import AutoTokenizer

        root = self.context.model_dir
        graphs = sorted(root.rglob("*.onnx"))
        if not graphs:
            raise FileNotFoundError("no .onnx file in the version")
        options = ort.SessionOptions()
        if self.context.torch_threads:
            options.intra_op_num_threads = self.context.torch_threads
        self._session = ort.InferenceSession(
            str(graphs[0]), options, providers=["CPUExecutionProvider"]
        )
        names = {i.name for i in self._session.get_inputs()}
        self._feeds = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in names]
        if "input_ids" not in names:
            raise ValueError(f"the graph takes {sorted(names)}; a text model needs input_ids")
        self._tokenizer = AutoTokenizer.from_pretrained(str(root))
        config_file = root / "config.json"
        self._config = json.loads(config_file.read_text()) if config_file.exists() else {}
        positions = self._config.get("max_position_embeddings")
        self._max_length = sequence_limit(
            int(positions) if positions else None, self._tokenizer, 512
        )
        self._bytes = sum(p.stat().st_size for p in graphs)
        self._forward(["warm up"])

    async def unload(self) -> None:
        self._session = None
        self._tokenizer = None

    def length_key(self) -> Callable[[Any], int]:
        return lambda item: estimated_tokens(str(item), self._max_length)

    def _forward(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        enc = self._tokenizer(
            texts, padding=True, truncation=True, max_length=self._max_length, return_tensors="np"
        )
        feed = {name: enc[name].astype(np.int64) for name in self._feeds if name in enc}
        if "token_type_ids" in self._feeds and "token_type_ids" not in feed:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        (first, *_) = self._session.run(None, feed)
        return np.asarray(first), np.asarray(enc["attention_mask"])

    def memory_bytes(self) -> int:
        return self._bytes


class OnnxTextClassificationRuntime(_OnnxText):
    task = "text-classification"

    @property
    def labels(self) -> list[str]:
        id2label = self._config.get("id2label") or {}
        count = len(id2label) or int(self._config.get("num_labels", 0))
        return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(count)]

    async def predict(self, batch: Sequence[Any]) -> Sequence[Classification]:
        return await self.run(self._classify, [str(x) for x in batch])

    def _classify(self, texts: list[str]) -> list[Classification]:
        logits, mask = self._forward(texts)  # (batch, labels), (batch, seq)
        shifted = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        labels = self.labels or [f"LABEL_{i}" for i in range(probs.shape[1])]
        out = []
        for row, n in zip(probs, mask.sum(axis=1), strict=True):
            ranked = sorted(zip(labels, row.tolist(), strict=True), key=lambda p: -p[1])
            out.append(Classification(labels=ranked, tokens=int(n)))
        return out

    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("text", "BYTES", [-1])]

    def outputs(self) -> list[TensorSpec]:
        # The DataPlane's outputs, not the graph's logits. A config without
        # labels still has the graph's class axis: (batch, labels).
        count = len(self.labels) or self._session.get_outputs()[0].shape[-1]
        return [
            TensorSpec("label", "BYTES", [-1]),
            TensorSpec("probabilities", "FP32", [-1, count if isinstance(count, int) else -1]),
        ]


class OnnxEmbeddingRuntime(_OnnxText):
    task = "embeddings"

    async def predict(self, batch: Sequence[Any]) -> Sequence[Embedding]:
        return await self.run(self._embed, [str(x) for x in batch])

    def _embed(self, texts: list[str]) -> list[Embedding]:
        hidden, mask = self._forward(texts)  # (batch, seq, dim), (batch, seq)
        weights = mask[:, :, None].astype(np.float32)  # (batch, seq, 1)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return [
            Embedding(vector=pooled[i].astype(np.float32), tokens=int(mask[i].sum()))
            for i in range(len(texts))
        ]

    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("text", "BYTES", [-1])]

    def outputs(self) -> list[TensorSpec]:
        # The pooled vector, not the graph's (batch, seq, hidden) state; its
        # width is the graph's last axis (configs name it hidden_size, dim, d_model).
        dim = self._session.get_outputs()[0].shape[-1]
        if not isinstance(dim, int):
            dim = int(self._config.get("hidden_size", -1))
        return [TensorSpec("embedding", "FP32", [-1, dim])]
