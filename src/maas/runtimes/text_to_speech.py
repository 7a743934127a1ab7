"""Text to speech with a transformers VITS model (``VitsModel``: MMS-TTS and its kin).

A batch item is a ``SpeechInput`` (text, voice, speed); the answer a
``Waveform`` (float32 mono samples at the model's rate). VITS is not
autoregressive: one forward makes the whole waveform, and the items of a batch
with the same speed are padded into one forward (``sequence_lengths`` tells each
row's own length). The speed is the model's ``speaking_rate``, an attribute
read during the forward, so the forwards of one model take turns (a lock):
VITS is fast enough on a CPU that this costs less than two concurrent forwards
on the same cores would gain.

``voice``: OpenAI's names (alloy, echo, ...) pick a speaker of a multi-speaker
model by their order; a single-speaker model speaks every voice the same.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maas.errors import InvalidRequestError
from maas.runtimes.base import Runtime, TensorSpec, intra_op_threads, module_bytes

# OpenAI's voices, in the order a multi-speaker model's speaker ids are given to them.
VOICES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
)
MIN_SPEED, MAX_SPEED = 0.25, 4.0


@dataclass(frozen=True, slots=True)
class SpeechInput:
    text: str
    voice: str = "alloy"
    speed: float = 1.0  # 0.25 .. 4.0; 2.0 speaks twice as fast


@dataclass(frozen=True, slots=True)
class Waveform:
    samples: np.ndarray  # (n,) float32 in [-1, 1]
    sample_rate: int

    @property
    def seconds(self) -> float:
        return float(self.samples.shape[0]) / self.sample_rate


class VitsTextToSpeechRuntime(Runtime):
    task = "text-to-speech"
    formats = ("hf",)

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self._model: Any = None
        self._tokenizer: Any = None
        self._speakers = 1
        self._lock = threading.Lock()  # speaking_rate is model state (module docstring)

    @property
    def sample_rate(self) -> int:
        return int(self._model.config.sampling_rate) if self._model is not None else 0

    async def load(self) -> None:
        await self.run(self._load_sync)

    def _load_sync(self) -> None:
        import torch
        from transformers import AutoTokenizer, VitsModel

        if self.context.torch_threads:
            torch.set_num_threads(self.context.torch_threads)
        root = Path(self.context.model_dir)
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(root))
        except (OSError, ValueError) as exc:
            raise InvalidRequestError(f"the speech model has no usable tokenizer: {exc}") from exc
        model: Any = VitsModel.from_pretrained(str(root), dtype=torch.float32)
        model.eval()
        self._model = model
        self._speakers = int(getattr(model.config, "num_speakers", 1) or 1)
        self._predict_sync([SpeechInput("warm up")], 0)

    async def unload(self) -> None:
        self._model = None

    async def predict(self, batch: Sequence[Any]) -> Sequence[Waveform | BaseException]:
        return await self.predict_with_threads(batch, 0)

    async def predict_with_threads(
        self, batch: Sequence[Any], threads: int
    ) -> Sequence[Waveform | BaseException]:
        return await self.run_compute(self._predict_sync, list(batch), threads)

    def _predict_sync(self, batch: list[Any], threads: int) -> list[Waveform | BaseException]:
        results: list[Waveform | BaseException] = [InvalidRequestError("pending") for _ in batch]
        groups: dict[tuple[float, int], list[int]] = defaultdict(list)
        for i, item in enumerate(batch):
            problem = self._check(item)
            if problem is not None:
                results[i] = problem
            else:
                groups[(float(item.speed), self._speaker(item.voice))].append(i)
        with intra_op_threads(threads), self._lock:
            for (speed, speaker), indices in groups.items():
                texts = [batch[i].text for i in indices]
                for i, waveform in zip(indices, self._speak(texts, speed, speaker), strict=True):
                    results[i] = waveform
        return results

    def _check(self, item: Any) -> InvalidRequestError | None:
        if not isinstance(item, SpeechInput):
            return InvalidRequestError(f"expected a SpeechInput, got {type(item).__name__}")
        if not item.text.strip():
            return InvalidRequestError("input must not be empty", param="input")
        if not MIN_SPEED <= item.speed <= MAX_SPEED:
            return InvalidRequestError(
                f"speed must be between {MIN_SPEED} and {MAX_SPEED}", param="speed"
            )
        return None

    def _speaker(self, voice: str) -> int:
        if self._speakers <= 1 or voice not in VOICES:
            return 0
        return VOICES.index(voice) % self._speakers

    def _speak(self, texts: list[str], speed: float, speaker: int) -> list[Waveform]:
        import torch

        encoded = self._tokenizer(texts, return_tensors="pt", padding=True)
        if encoded["input_ids"].shape[1] == 0:
            raise InvalidRequestError("the model's tokenizer keeps nothing of this input")
        kwargs: dict[str, Any] = {}
        if self._speakers > 1:
            kwargs["speaker_id"] = speaker
        self._model.speaking_rate = speed
        with torch.inference_mode():
            out = self._model(**encoded, **kwargs)
        waveforms = out.waveform.float().numpy()  # (batch, samples), padded
        lengths = out.sequence_lengths.tolist() if len(texts) > 1 else [waveforms.shape[1]]
        rate = self.sample_rate
        return [
            Waveform(np.ascontiguousarray(row[: int(n)], dtype=np.float32), rate)
            for row, n in zip(waveforms, lengths, strict=True)
        ]

    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("text", "BYTES", [1])]

    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec("audio", "FP32", [-1])]

    def memory_bytes(self) -> int:
        return module_bytes(self._model)
