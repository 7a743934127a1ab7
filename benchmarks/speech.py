"""Speech recognition benchmark: real-time factor, batched vs one at a time, served vs in process.

The tiny random Whisper of the tests (tests/media_models.py: 1 encoder and 1
decoder layer, d_model 32, at most 24 tokens a window) transcribes 16 clips of
espeak-ng speech (2-4 s each). Real-time factor here is audio seconds per
compute second (higher is faster).

(a) In process, the runtime alone: the 16 clips one at a time, then as one batch.
(b) transformers' pipeline in process (greedy), one clip at a time: the baseline.
(c) A real ``maas serve`` (``MAAS_WORKERS=1``): the official ``openai`` client
    sends the 16 files one at a time (served / pipeline: the overhead of HTTP,
    multipart, decoding, admission and batching; target at most 1.1x), then all 16 at
    once from 16 threads (the batcher groups them).

Every forward uses one intra-op thread (``torch.set_num_threads(1)`` here,
``MAAS_TORCH_THREADS=1`` for the server): the tiny model gains nothing from a
second thread, and on a busy 2-core machine two OpenMP threads spin against the
other load (a lone transcription took 1.2-2.5 s with 2 threads and 0.13 s with 1
while other jobs ran), which would compare the machine's load, not maas.

Each figure is the median of ``--repeats`` runs, interleaved. Usage:
``.venv/bin/python benchmarks/speech.py [--repeats 5]``. Needs espeak-ng and sox.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import REPO, start_server

sys.path.insert(0, str(REPO))

SENTENCES = (
    "How do I reset my password?",
    "The delivery arrived two days late and the box was damaged.",
    "Best hiking trails near Lake Tahoe for beginners",
    "Can I change the shipping address after placing an order?",
    "The new firmware update drains the battery much faster than before.",
    "What is the difference between a Roth and a traditional account?",
    "Our quarterly revenue grew by twelve percent compared to last year.",
    "The kitchen faucet keeps dripping even when fully closed.",
    "Please cancel my subscription at the end of this billing cycle.",
    "A quick vegetarian dinner recipe with chickpeas and spinach",
    "The meeting has been moved to Thursday at three in the afternoon.",
    "Why does my laptop fan get so loud when I open a browser?",
    "The hotel room was clean, quiet and close to the train station.",
    "How long does it take to get a passport renewed?",
    "The app crashes every time I try to upload a photo.",
    "Cheap flights from Berlin to Lisbon in October",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import numpy as np
    import openai
    import torch
    from tests.media_models import make_whisper_dir, speak, version_info
    from transformers import pipeline

    from maas.config import Settings
    from maas.registry.store import Registry
    from maas.runtimes.audio import SAMPLE_RATE, decode
    from maas.runtimes.base import RuntimeContext
    from maas.runtimes.speech_recognition import SpeechChunk, WhisperSpeechRecognitionRuntime

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="maas-speech-bench-") as tmp:
        root = Path(tmp)
        model_dir = make_whisper_dir(root / "whisper")
        clips = [speak(s, root / f"clip{i}.wav") for i, s in enumerate(SENTENCES)]
        audios = [decode(c.read_bytes(), max_seconds=60).samples for c in clips]
        audio_seconds = sum(a.shape[0] for a in audios) / SAMPLE_RATE
        print(f"cpu: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
        print(f"{len(clips)} clips, {audio_seconds:.1f} s of audio")

        executor = ThreadPoolExecutor(1)
        runtime = WhisperSpeechRecognitionRuntime(
            RuntimeContext(
                model_dir=model_dir,
                version=version_info(model_dir, "automatic-speech-recognition"),
                executor=executor,
                torch_threads=1,
            )
        )
        asyncio.run(runtime.load())
        asr = pipeline("automatic-speech-recognition", model=str(model_dir))

        def one_at_a_time() -> float:
            started = time.perf_counter()
            for audio in audios:
                asyncio.run(runtime.predict([SpeechChunk(audio)]))
            return time.perf_counter() - started

        def batched() -> float:
            started = time.perf_counter()
            asyncio.run(runtime.predict([SpeechChunk(a) for a in audios]))
            return time.perf_counter() - started

        def in_process_pipeline() -> float:
            started = time.perf_counter()
            for audio in audios:
                asr(
                    {"raw": np.asarray(audio), "sampling_rate": SAMPLE_RATE},
                    generate_kwargs={"num_beams": 1},
                )
            return time.perf_counter() - started

        home = root / "home"
        registry = Registry(Settings(home=home))
        try:
            registry.push(model_dir, "whisper")
        finally:
            registry.close()
        server = start_server(
            home, {"MAAS_WORKERS": "1", "MAAS_LOG_LEVEL": "warning", "MAAS_TORCH_THREADS": "1"}
        )
        try:
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.key)
            client.audio.transcriptions.create(model="whisper", file=clips[0])  # loads it

            def served_sequential() -> float:
                started = time.perf_counter()
                for clip in clips:
                    client.audio.transcriptions.create(model="whisper", file=clip)
                return time.perf_counter() - started

            def served_concurrent() -> float:
                started = time.perf_counter()
                with ThreadPoolExecutor(len(clips)) as pool:
                    list(
                        pool.map(
                            lambda c: client.audio.transcriptions.create(model="whisper", file=c),
                            clips,
                        )
                    )
                return time.perf_counter() - started

            runs: dict[str, list[float]] = {
                name: []
                for name in (
                    "runtime, one at a time",
                    "runtime, one batch of 16",
                    "pipeline in process, one at a time",
                    "served, one at a time",
                    "served, 16 concurrent",
                )
            }
            measures = [
                one_at_a_time,
                batched,
                in_process_pipeline,
                served_sequential,
                served_concurrent,
            ]
            for _ in range(args.repeats):
                for name, measure in zip(runs, measures, strict=True):
                    runs[name].append(measure())
        finally:
            server.stop()
            asyncio.run(runtime.unload())
            executor.shutdown()

        print(f"\n{'':38s} {'seconds':>8s} {'real-time factor':>17s}")
        medians = {name: statistics.median(values) for name, values in runs.items()}
        for name, seconds in medians.items():
            print(f"{name:38s} {seconds:8.3f} {audio_seconds / seconds:16.1f}x")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        print(
            "\nbatched / one at a time (runtime): "
            f"{medians['runtime, one at a time'] / medians['runtime, one batch of 16']:.2f}x faster"
        )
        overhead = medians["served, one at a time"] / medians["pipeline in process, one at a time"]
        print(
            f"served / in-process pipeline (one at a time): {overhead:.2f}x the time "
            "(target <= 1.1x)"
        )


if __name__ == "__main__":
    main()
