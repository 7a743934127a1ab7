"""Custom MLServer 1.7.1 runtimes for ``serving.py``'s side-by-side comparison.

MLServer has no ONNX runtime package for 1.7 and its Hugging Face runtime runs
a ``pipeline`` (no mean-pool + normalise), so both workloads get a small
runtime here that does exactly what maas does:

* ``MiniLMEmbeddings``: one BYTES input ``text`` of N strings -> FP32
  ``embedding`` (N, 384): tokenise, pad, forward, mean-pool over real tokens,
  L2-normalise (the computation of ``maas.runtimes.embeddings`` and of
  ``_baselines.MiniLM``). With adaptive batching on, MLServer concatenates the
  requests' ``text`` inputs along the first axis and splits the output back.
  ``parameters.extra.torch_threads`` > 0 sets ``torch.set_num_threads`` (0: torch's
  default, one thread per core).
* ``AffineOnnx``: one FP32 input ``x`` [batch, 4] -> ``y`` [batch, 3] through an
  ``onnxruntime.InferenceSession`` (the same graph file maas serves).

This file is imported by MLServer (from the model folder ``serving.py`` writes),
in MLServer's own virtual environment; the project's venv never imports it.
Like the other ``benchmarks/_*`` helpers, running it does nothing.
"""

from __future__ import annotations

import sys
from typing import Any

try:
    from mlserver import MLModel
    from mlserver.codecs import NumpyCodec, StringCodec
    from mlserver.types import InferenceRequest, InferenceResponse
except ImportError:  # the project's venv (ruff, an accidental run): nothing to define
    MLModel = object  # type: ignore[assignment,misc]


class MiniLMEmbeddings(MLModel):  # type: ignore[misc,valid-type]
    """all-MiniLM-L6-v2 sentence embeddings (``parameters.uri``: the HF model directory)."""

    async def load(self) -> bool:
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = str(self.settings.parameters.uri)
        threads = int((self.settings.parameters.extra or {}).get("torch_threads", 0))
        if threads > 0:
            torch.set_num_threads(threads)
        self._torch = torch
        self._tokenizer: Any = AutoTokenizer.from_pretrained(path)
        model: Any = AutoModel.from_pretrained(path, dtype=torch.float32)
        model.eval()
        self._model = model
        limits = [int(model.config.max_position_embeddings)]
        tok_max = getattr(self._tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and tok_max < 100_000:
            limits.append(tok_max)
        self._max_length = min(limits)
        self._embed(["warm-up"])  # first forward allocates; keep it out of requests
        return True

    def _embed(self, texts: list[str]) -> Any:
        torch = self._torch
        ids_list = self._tokenizer(texts, truncation=True, max_length=self._max_length)["input_ids"]
        pad = int(self._tokenizer.pad_token_id or 0)
        longest = max(len(ids) for ids in ids_list)
        input_ids = torch.full((len(ids_list), longest), pad, dtype=torch.long)  # (batch, seq)
        mask = torch.zeros((len(ids_list), longest), dtype=torch.long)  # (batch, seq)
        for row, ids in enumerate(ids_list):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        with torch.inference_mode():
            hidden = self._model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)  # (batch, 384)
        return pooled.numpy()

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        texts = [str(t) for t in StringCodec.decode_input(payload.inputs[0])]
        vectors = self._embed(texts)  # (batch, 384)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output("embedding", vectors)],
        )


class AffineOnnx(MLModel):  # type: ignore[misc,valid-type]
    """``InferenceSession.run`` on the ``parameters.uri`` ONNX file (default session options)."""

    async def load(self) -> bool:
        import onnxruntime as ort

        self._session = ort.InferenceSession(
            str(self.settings.parameters.uri), providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])  # (batch, 4) float32
        results = self._session.run(self._outputs, {self._input: x})
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[
                NumpyCodec.encode_output(name, value)
                for name, value in zip(self._outputs, results, strict=True)
            ],
        )


if __name__ == "__main__":
    print("MLServer runtimes for benchmarks/serving.py; run that instead", file=sys.stderr)
