"""Text classification with a Hugging Face sequence-classification model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from maas.errors import UnavailableError
from maas.runtimes.base import (
    Runtime,
    TensorSpec,
    estimated_tokens,
    intra_op_threads,
    module_bytes,
    sequence_limit,
)
from maas.runtimes.explain import Explanation, explain_classification


@dataclass(frozen=True, slots=True)
class Classification:
    labels: list[tuple[str, float]]  # every label with its probability, best first
    tokens: int


class HFTextClassificationRuntime(Runtime):
    task = "text-classification"
    formats = ("hf",)

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self._model: Any = None
        self._tokenizer: Any = None
        self._labels: list[str] = []
        self._max_length = 512

    async def load(self) -> None:
        await self.run(self._load_sync)

    def _load_sync(self) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if self.context.torch_threads:
            torch.set_num_threads(self.context.torch_threads)
        path = str(self.context.model_dir)
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = AutoModelForSequenceClassification.from_pretrained(path)
        self._model.eval()
        config = self._model.config
        self._labels = [str(config.id2label[i]) for i in range(config.num_labels)]
        self._max_length = sequence_limit(config.max_position_embeddings, self._tokenizer, 512)
        self._classify(["warm up"])

    @property
    def labels(self) -> list[str]:
        """Label names in the model's index order (the order of ``probabilities``)."""
        return list(self._labels)

    async def unload(self) -> None:
        self._model = None
        self._tokenizer = None

    def length_key(self) -> Callable[[Any], int]:
        return lambda item: estimated_tokens(str(item), self._max_length)

    async def predict(self, batch: Sequence[Any]) -> Sequence[Classification]:
        return await self.predict_with_threads(batch, 0)

    async def predict_with_threads(
        self, batch: Sequence[Any], threads: int
    ) -> Sequence[Classification]:
        return await self.run(self._classify, [str(x) for x in batch], threads)

    def _classify(self, texts: list[str], threads: int = 0) -> list[Classification]:
        import torch

        enc = self._tokenizer(
            texts, padding=True, truncation=True, max_length=self._max_length, return_tensors="pt"
        )
        with intra_op_threads(threads), torch.inference_mode():
            logits = self._model(**enc).logits  # (batch, labels)
            probs = torch.softmax(logits, dim=-1).numpy()
        counts = enc["attention_mask"].sum(dim=1).tolist()
        out = []
        for row, n in zip(probs, counts, strict=True):
            ranked = sorted(zip(self._labels, row.tolist(), strict=True), key=lambda p: -p[1])
            out.append(Classification(labels=ranked, tokens=int(n)))
        return out

    async def explain(self, text: str, *, target: str | int | None, steps: int) -> Explanation:
        """Integrated Gradients token attributions for one text (see ``maas.runtimes.explain``)."""
        model, tokenizer = self._model, self._tokenizer
        if model is None or tokenizer is None:
            raise UnavailableError(f"model {self.version.ref} is not loaded")
        return await self.run(
            lambda: explain_classification(
                model, tokenizer, text, target=target, steps=steps, max_length=self._max_length
            )
        )

    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("text", "BYTES", [-1])]

    def outputs(self) -> list[TensorSpec]:
        return [
            TensorSpec("label", "BYTES", [-1]),
            TensorSpec("probabilities", "FP32", [-1, len(self._labels)]),
        ]

    def memory_bytes(self) -> int:
        return module_bytes(self._model)
