"""Sentence embeddings from a Hugging Face encoder: mean pooling + L2 normalisation.

This is the recipe all-MiniLM-L6-v2 (and sentence-transformers models in
general) were trained with, so vectors match the reference implementation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from maas.errors import InvalidRequestError
from maas.runtimes.base import (
    Runtime,
    TensorSpec,
    estimated_tokens,
    intra_op_threads,
    module_bytes,
    sequence_limit,
)

EmbeddingInput = str | list[int]


@dataclass(frozen=True, slots=True)
class Embedding:
    vector: np.ndarray  # (hidden,) float32, unit length
    tokens: int  # tokens the model actually read (after truncation)


class HFEmbeddingRuntime(Runtime):
    task = "embeddings"
    formats = ("hf",)

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self._model: Any = None
        self._tokenizer: Any = None
        self._max_length = 512
        self._dim = 0
        self._vocab_size = 0

    async def load(self) -> None:
        await self.run(self._load_sync)

    def _load_sync(self) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        if self.context.torch_threads:
            torch.set_num_threads(self.context.torch_threads)
        path = str(self.context.model_dir)
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, dtype=torch.float32)
        model.eval()
        self._model = model
        config = model.config
        self._dim = int(config.hidden_size)
        self._vocab_size = int(config.vocab_size)
        positions = int(config.max_position_embeddings)
        self._max_length = sequence_limit(positions, self._tokenizer, positions)
        self._embed_sync(["warm up"])  # first forward allocates; keep it out of requests

    async def unload(self) -> None:
        self._model = None
        self._tokenizer = None

    @property
    def dimensions(self) -> int:
        return self._dim

    def count_tokens(self, text: str) -> int:
        ids = self._tokenizer(text, truncation=True, max_length=self._max_length)["input_ids"]
        return len(ids)

    def length_key(self) -> Callable[[Any], int]:
        return functools.partial(estimated_tokens, max_tokens=self._max_length)

    async def predict(self, batch: Sequence[Any]) -> Sequence[Embedding | BaseException]:
        return await self.predict_with_threads(batch, 0)

    async def predict_with_threads(
        self, batch: Sequence[Any], threads: int
    ) -> Sequence[Embedding | BaseException]:
        return await self.run(self._predict_sync, list(batch), threads)

    def _predict_sync(
        self, batch: list[EmbeddingInput], threads: int = 0
    ) -> list[Embedding | BaseException]:
        results: list[Embedding | BaseException] = []
        valid: list[int] = []
        for i, item in enumerate(batch):
            if isinstance(item, list) and any(
                not isinstance(t, int) or t < 0 or t >= self._vocab_size for t in item
            ):
                results.append(
                    InvalidRequestError(
                        f"token ids must be integers in [0, {self._vocab_size})",
                        param="input",
                    )
                )
            else:
                results.append(InvalidRequestError("pending"))  # replaced below
                valid.append(i)
        if valid:
            with intra_op_threads(threads):
                embeddings = self._embed_sync([batch[i] for i in valid])
            for i, emb in zip(valid, embeddings, strict=True):
                results[i] = emb
        return results

    def _embed_sync(self, items: list[EmbeddingInput]) -> list[Embedding]:
        import torch

        texts = [t for t in items if isinstance(t, str)]
        encoded_texts = (
            self._tokenizer(texts, truncation=True, max_length=self._max_length)["input_ids"]
            if texts
            else []
        )
        it = iter(encoded_texts)
        ids_list = [next(it) if isinstance(t, str) else t[: self._max_length] for t in items]
        pad = int(self._tokenizer.pad_token_id or 0)
        longest = max(len(ids) for ids in ids_list)
        input_ids = torch.full((len(ids_list), longest), pad, dtype=torch.long)  # (batch, seq)
        mask = torch.zeros((len(ids_list), longest), dtype=torch.long)  # (batch, seq)
        for row, ids in enumerate(ids_list):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        with torch.inference_mode():
            hidden = self._model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            # hidden: (batch, seq, dim); average only over real tokens
            weights = mask.unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)  # (batch, dim)
        vectors = pooled.numpy().astype(np.float32, copy=False)
        return [Embedding(vector=vectors[i], tokens=len(ids_list[i])) for i in range(len(ids_list))]

    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("text", "BYTES", [-1])]

    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec("embedding", "FP32", [-1, self._dim])]

    def memory_bytes(self) -> int:
        return module_bytes(self._model)
