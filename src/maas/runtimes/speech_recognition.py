"""Speech to text with a Whisper-family model (``WhisperForConditionalGeneration``).

A batch item is one ``SpeechChunk``: at most 30 s of 16 kHz mono audio (the
window Whisper's encoder reads) and the decoding options of its request. The
serving layer cuts longer audio into overlapping chunks (``chunk_audio``),
submits them as items of one request, and joins the answers (``stitch``), so
the chunks of one long file and the short files of concurrent callers share
batches alike.

Items of a batch with the same options are decoded in one ``generate`` call:
Whisper pads every input to 30 s of log-mel frames, so an item's encoder input
is the same alone or batched, and greedy decoding gives the same tokens.

Timestamps: when asked (``timestamps=True``) the model emits timestamp tokens
``<|t|>`` (0.02 s apart) around each segment of text; ``segments_of`` reads
them back. Without them the chunk is one segment.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maas.errors import InvalidRequestError
from maas.runtimes.audio import SAMPLE_RATE
from maas.runtimes.base import Runtime, TensorSpec, intra_op_threads, module_bytes

CHUNK_SECONDS = 30.0  # Whisper's input window
OVERLAP_SECONDS = 5.0  # shared by neighbouring chunks; each keeps the segments of its half
TIMESTAMP_STEP = 0.02  # seconds per timestamp token
TASKS = ("transcribe", "translate")


@dataclass(frozen=True, slots=True)
class SpeechChunk:
    """One window of audio to decode, with its request's options (a batch item)."""

    audio: np.ndarray  # (samples,) float32, 16 kHz mono, at most CHUNK_SECONDS long
    task: str = "transcribe"  # or "translate" (to English)
    language: str | None = None  # ISO 639-1 ("en"); None: the model detects it
    prompt: str | None = None  # text that conditions the decoding (previous context)
    temperature: float = 0.0  # 0: greedy
    timestamps: bool = False  # ask for segment timestamps

    def options(self) -> tuple[str, str | None, str | None, float, bool]:
        return (self.task, self.language, self.prompt, self.temperature, self.timestamps)


@dataclass(frozen=True, slots=True)
class Segment:
    start: float  # seconds from the start of the audio
    end: float
    text: str
    tokens: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Transcribed:
    """The answer for one chunk (times relative to the chunk's start)."""

    text: str
    segments: list[Segment]
    language: str | None  # the language decoded, named as OpenAI names it ("english")
    tokens: int  # text tokens generated


@dataclass(frozen=True, slots=True)
class Window:
    """Where a chunk sits in the whole audio, and the part of it whose segments it keeps."""

    offset: int  # first sample
    length: int  # samples
    keep_from: float  # seconds, absolute
    keep_to: float


def chunk_audio(
    samples: np.ndarray,
    *,
    chunk_seconds: float = CHUNK_SECONDS,
    overlap_seconds: float = OVERLAP_SECONDS,
) -> list[Window]:
    """Cut audio into windows of ``chunk_seconds`` that overlap by ``overlap_seconds``.

    Each window keeps the segments that start in its own part: from the middle of
    the overlap with the previous window to the middle of the overlap with the
    next, so every instant of the audio belongs to exactly one window.
    """
    total = samples.shape[0]
    duration = total / SAMPLE_RATE
    size = int(chunk_seconds * SAMPLE_RATE)
    if total <= size:
        return [Window(0, total, 0.0, duration)]
    stride = int((chunk_seconds - overlap_seconds) * SAMPLE_RATE)
    count = 1 + math.ceil((total - size) / stride)
    half = overlap_seconds / 2
    windows = []
    for i in range(count):
        offset = i * stride
        length = min(size, total - offset)
        keep_from = 0.0 if i == 0 else offset / SAMPLE_RATE + half
        keep_to = duration if i == count - 1 else (offset + size) / SAMPLE_RATE - half
        windows.append(Window(offset, length, keep_from, keep_to))
    return windows


def stitch(windows: Sequence[Window], answers: Sequence[Transcribed]) -> list[Segment]:
    """Join the segments of overlapping windows into one timeline that covers the audio.

    A window keeps the segments whose middle falls in its own part, clamped to it
    (the first and the last window also keep what falls outside the audio).
    The segments tile the audio: the first of a window starts where its part
    starts, and a gap (silence, or a model that gave no timestamps) goes to the
    segment before it, so subtitles never leave a hole or go back in time.
    """
    out: list[Segment] = []
    for index, (window, answer) in enumerate(zip(windows, answers, strict=True)):
        base = window.offset / SAMPLE_RATE
        # The first and last windows also own what a model places before the start or
        # past the end of the audio (clamped below): its text is not dropped.
        lowest = window.keep_from if index > 0 else -math.inf
        highest = window.keep_to if index < len(windows) - 1 else math.inf
        kept: list[Segment] = []
        for seg in answer.segments:
            start, end = base + seg.start, base + seg.end
            own = lowest <= (start + end) / 2 < highest
            if not own and len(answer.segments) > 1:  # a lone segment covers its window
                continue
            kept.append(Segment(start, end, seg.text, seg.tokens))
        if not kept:
            kept = [Segment(window.keep_from, window.keep_to, "", [])]
        for i, seg in enumerate(kept):
            start = window.keep_from if i == 0 else max(kept[i - 1].end, seg.start)
            start = min(max(start, window.keep_from), window.keep_to)
            end = window.keep_to if i == len(kept) - 1 else kept[i + 1].start
            end = min(max(end, start), window.keep_to)
            kept[i] = Segment(round(start, 3), round(end, 3), seg.text, seg.tokens)
        out.extend(kept)
    return out


class WhisperSpeechRecognitionRuntime(Runtime):
    task = "automatic-speech-recognition"
    formats = ("hf",)

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self._model: Any = None
        self._features: Any = None  # WhisperFeatureExtractor
        self._tokenizer: Any = None
        self._special_from = 0  # ids at or above are special (eot, language, task, ...)
        self._timestamp_begin = 0  # id of <|0.00|>
        self._start_of_transcript = 0
        self._languages: dict[int, str] = {}  # language token id -> code ("en")
        self._language_names: dict[str, str] = {}  # code -> name ("en" -> "english")

    async def load(self) -> None:
        await self.run(self._load_sync)

    def _load_sync(self) -> None:
        import torch
        from transformers import AutoProcessor, WhisperForConditionalGeneration

        if self.context.torch_threads:
            torch.set_num_threads(self.context.torch_threads)
        root = Path(self.context.model_dir)
        try:
            loader: Any = AutoProcessor  # untyped in transformers
            processor = loader.from_pretrained(str(root))
        except (OSError, ValueError) as exc:
            raise InvalidRequestError(
                f"the speech model has no usable processor (feature extractor and "
                f"tokenizer files): {exc}"
            ) from exc
        model: Any = WhisperForConditionalGeneration.from_pretrained(str(root), dtype=torch.float32)
        model.eval()
        self._model = model
        self._features = processor.feature_extractor
        self._tokenizer = processor.tokenizer
        generation = model.generation_config
        no_timestamps = getattr(generation, "no_timestamps_token_id", None)
        if no_timestamps is None:
            raise InvalidRequestError("generation_config.json has no no_timestamps_token_id")
        self._timestamp_begin = int(no_timestamps) + 1
        eot = generation.eos_token_id
        self._special_from = int(eot[0] if isinstance(eot, list) else eot)
        self._start_of_transcript = int(generation.decoder_start_token_id)
        lang_to_id = getattr(generation, "lang_to_id", None) or {}
        self._languages = {int(i): tok.strip("<|>") for tok, i in lang_to_id.items()}
        from transformers.models.whisper.tokenization_whisper import LANGUAGES

        self._language_names = dict(LANGUAGES)
        # First generate allocates; keep it out of requests.
        self._predict_sync([SpeechChunk(np.zeros(SAMPLE_RATE, dtype=np.float32))], 0)

    @property
    def languages(self) -> list[str]:
        return sorted(self._languages.values())

    async def unload(self) -> None:
        self._model = None

    async def predict(self, batch: Sequence[Any]) -> Sequence[Transcribed | BaseException]:
        return await self.predict_with_threads(batch, 0)

    async def predict_with_threads(
        self, batch: Sequence[Any], threads: int
    ) -> Sequence[Transcribed | BaseException]:
        return await self.run_compute(self._predict_sync, list(batch), threads)

    def _predict_sync(self, batch: list[Any], threads: int) -> list[Transcribed | BaseException]:
        results: list[Transcribed | BaseException] = [InvalidRequestError("pending") for _ in batch]
        groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        for i, item in enumerate(batch):
            problem = self._check(item)
            if problem is not None:
                results[i] = problem
            else:
                groups[item.options()].append(i)
        with intra_op_threads(threads):
            for indices in groups.values():
                chunks = [batch[i] for i in indices]
                try:
                    answers: list[Transcribed | BaseException] = list(self._decode(chunks))
                except ValueError as exc:  # generate's refusal of an option combination
                    error = InvalidRequestError(f"the model cannot decode this request: {exc}")
                    answers = [error] * len(chunks)
                for i, answer in zip(indices, answers, strict=True):
                    results[i] = answer
        return results

    def _check(self, item: Any) -> InvalidRequestError | None:
        if not isinstance(item, SpeechChunk):
            return InvalidRequestError(f"expected a SpeechChunk, got {type(item).__name__}")
        if item.audio.ndim != 1 or item.audio.shape[0] == 0:
            return InvalidRequestError("the audio chunk must be a non-empty 1-D array")
        if item.audio.shape[0] > int(CHUNK_SECONDS * SAMPLE_RATE):
            return InvalidRequestError(f"an audio chunk may hold at most {CHUNK_SECONDS:g} s")
        if item.task not in TASKS:
            return InvalidRequestError(f"task must be one of {', '.join(TASKS)}")
        if item.language is not None and item.language not in self._languages.values():
            known = ", ".join(self.languages) or "none"
            return InvalidRequestError(
                f"language {item.language!r} is not one this model knows ({known})",
                param="language",
            )
        return None

    def _decode(self, chunks: list[SpeechChunk]) -> list[Transcribed]:
        import torch

        first = chunks[0]
        features = self._features(
            [c.audio for c in chunks], sampling_rate=SAMPLE_RATE, return_tensors="pt"
        ).input_features  # (batch, mel bins, 3000 frames)
        # Transcription is the model's default decoding: no task token is forced (the
        # checkpoint's own generation config decides), exactly as transformers'
        # pipeline decodes, so both give the same text.
        kwargs: dict[str, Any] = {"return_timestamps": first.timestamps}
        if first.task != "transcribe":
            kwargs["task"] = first.task
        if first.language is not None:
            kwargs["language"] = first.language
        if first.temperature > 0:
            kwargs.update(do_sample=True, temperature=first.temperature)
        if first.prompt:
            kwargs["prompt_ids"] = torch.tensor(self._tokenizer.get_prompt_ids(first.prompt))
        languages: list[str | None] = [first.language] * len(chunks)
        with torch.inference_mode():
            sequences = self._model.generate(features, **kwargs)  # (batch, tokens)
            if first.language is None and first.timestamps and self._languages:
                # generate() drops the language token it chose from its output; the
                # detailed answers (verbose_json) name it, at one more encoder pass.
                detected = self._model.detect_language(features)  # (batch,) token ids
                languages = [self._languages.get(int(i)) for i in detected.reshape(-1)]
        if not isinstance(sequences, torch.Tensor):
            sequences = sequences["sequences"]
        return [
            self._answer(row.tolist(), c.audio.shape[0] / SAMPLE_RATE, language)
            for row, c, language in zip(sequences, chunks, languages, strict=True)
        ]

    def _answer(self, ids: list[int], seconds: float, language: str | None) -> Transcribed:
        """Generated ids -> text and segments (from timestamp tokens)."""
        # What follows the last <|startoftranscript|>: a prompt comes before it.
        if self._start_of_transcript in ids:
            last = len(ids) - 1 - ids[::-1].index(self._start_of_transcript)
            ids = ids[last + 1 :]
        language = next((self._languages[i] for i in ids if i in self._languages), language)
        if language is not None:
            language = self._language_names.get(language, language)
        segments: list[Segment] = []
        text_ids: list[int] = []
        open_at: float | None = None
        pending: list[int] = []
        for token in ids:
            if token >= self._timestamp_begin:
                at = (token - self._timestamp_begin) * TIMESTAMP_STEP
                if open_at is None:
                    if pending:  # text before the first timestamp
                        segments.append(self._segment(0.0, at, pending))
                        pending = []
                    open_at = at
                else:
                    segments.append(self._segment(open_at, at, pending))
                    open_at, pending = None, []
            elif token < self._special_from:
                pending.append(token)
                text_ids.append(token)
        if pending or not segments:
            segments.append(self._segment(open_at or 0.0, seconds, pending))
        text = self._tokenizer.decode(text_ids, skip_special_tokens=True).strip()
        return Transcribed(text, segments, language, len(text_ids))

    def _segment(self, start: float, end: float, ids: list[int]) -> Segment:
        text = self._tokenizer.decode(ids, skip_special_tokens=True).strip()
        return Segment(start, max(end, start), text, list(ids))

    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("audio", "FP32", [-1])]

    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec("text", "BYTES", [1])]

    def memory_bytes(self) -> int:
        return module_bytes(self._model)
