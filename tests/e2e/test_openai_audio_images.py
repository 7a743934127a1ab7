"""The official ``openai`` client against a real server: transcriptions, speech and images.

Speech is synthesised by espeak-ng and converted by sox; the models are tiny random
Whisper, VITS and Stable Diffusion pipelines built in the test (tests/media_models.py).
"""

from __future__ import annotations

import base64
import io
import itertools
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import soundfile

from maas.config import Settings
from maas.registry.store import Registry
from maas.runtimes.audio import SAMPLE_RATE, decode
from tests.e2e.conftest import LiveServer, start_server
from tests.media_models import built, convert, repeat_to, speak

openai = pytest.importorskip("openai")

MAX_AUDIO_BYTES = 8 * 1024**2
SENTENCE = "speech recognition on a model service, tested end to end"
CUE_TIME = re.compile(r"(\d\d):(\d\d):(\d\d)[,.](\d\d\d) --> (\d\d):(\d\d):(\d\d)[,.](\d\d\d)")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("media-live")
    registry = Registry(Settings(home=home))
    try:
        registry.push(built("whisper", tmp_path_factory), "whisper")
        registry.push(built("vits", tmp_path_factory), "vits")
        registry.push(built("diffusion", tmp_path_factory), "diffusion")
    finally:
        registry.close()
    for server in start_server(
        home, {"MAAS_MAX_AUDIO_BYTES": str(MAX_AUDIO_BYTES), "MAAS_MAX_WAIT_MS": "5"}
    ):
        # Loaded now, so that no test pays for a model's first load.
        for name in ("whisper", "vits", "diffusion"):
            r = httpx.post(
                f"{server.url}/admin/v1/models/{name}/versions/1/load",
                headers={"Authorization": f"Bearer {server.key}"},
                timeout=120,
            )
            assert r.status_code == 200, r.text
        yield server


@pytest.fixture(scope="module")
def asr(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """transformers' own speech recognition pipeline on the same model, in this process."""
    from transformers import pipeline

    return pipeline("automatic-speech-recognition", model=str(built("whisper", tmp_path_factory)))


@pytest.fixture(scope="module")
def client(live: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key=live.key, max_retries=0)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    wav = speak(SENTENCE, tmp_path_factory.mktemp("speech") / "speech.wav")
    return {"wav": wav, "ogg": convert(wav, ".ogg"), "mp3": convert(wav, ".mp3")}


@pytest.mark.parametrize("fmt", ["wav", "ogg", "mp3"])
def test_a_transcription_equals_the_transformers_pipeline_in_process(
    client: openai.OpenAI, recordings: dict[str, Path], asr: Any, fmt: str
) -> None:
    path = recordings[fmt]
    served = client.audio.transcriptions.create(model="whisper", file=path)
    audio = decode(path.read_bytes(), max_seconds=60).samples
    # Greedy decoding, as maas decodes at temperature 0 (the pipeline's default is 5 beams).
    expected = asr({"raw": audio, "sampling_rate": SAMPLE_RATE}, generate_kwargs={"num_beams": 1})
    assert served.text == expected["text"].strip()
    assert served.text


def _cue_times(text: str) -> list[tuple[float, float]]:
    def seconds(h: str, m: str, s: str, ms: str) -> float:
        return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000

    return [(seconds(*m.groups()[:4]), seconds(*m.groups()[4:])) for m in CUE_TIME.finditer(text)]


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_subtitles_parse_and_their_times_increase(
    client: openai.OpenAI, recordings: dict[str, Path], fmt: str
) -> None:
    text = client.audio.transcriptions.create(
        model="whisper", file=recordings["wav"], response_format=fmt
    )
    assert isinstance(text, str)
    if fmt == "vtt":
        assert text.startswith("WEBVTT")
    cues = _cue_times(text)
    assert cues
    flat = [t for cue in cues for t in cue]
    assert flat == sorted(flat)
    assert cues[-1][1] <= soundfile.info(recordings["wav"]).duration + 0.01


@pytest.mark.slow
def test_a_three_minute_recording_is_chunked_and_its_segments_cover_it(
    client: openai.OpenAI, recordings: dict[str, Path], tmp_path: Path
) -> None:
    long = repeat_to(recordings["wav"], 180.0, tmp_path / "long.wav")
    answer = client.audio.transcriptions.create(
        model="whisper",
        file=long,
        response_format="verbose_json",
        timestamp_granularities=["segment"],
    )
    segments = answer.segments or []
    assert abs(answer.duration - 180.0) < 0.05
    assert segments[0].start == 0.0 and segments[-1].end == answer.duration
    for before, after in itertools.pairwise(segments):
        assert before.end == after.start  # no hole, no overlap
    # Seven 30 s windows (every 25 s): more than one window's worth of segments answered.
    assert max(s.end for s in segments) > 150
    assert answer.text


def _batch_totals(live: LiveServer) -> tuple[float, float]:
    """(items, batches) the whisper batcher has run, from /metrics."""
    text = httpx.get(
        f"{live.url}/metrics", headers={"Authorization": f"Bearer {live.key}"}, timeout=10
    ).text
    values = {}
    for name in ("sum", "count"):
        match = re.search(rf'^maas_batch_size_{name}{{model="whisper"}} (\S+)$', text, re.M)
        values[name] = float(match.group(1)) if match else 0.0
    return values["sum"], values["count"]


def test_concurrent_short_requests_share_batches(
    client: openai.OpenAI, live: LiveServer, recordings: dict[str, Path]
) -> None:
    items_before, batches_before = _batch_totals(live)
    with ThreadPoolExecutor(8) as pool:
        texts = list(
            pool.map(
                lambda _: (
                    client.audio.transcriptions.create(model="whisper", file=recordings["wav"]).text
                ),
                range(8),
            )
        )
    assert len(set(texts)) == 1  # the same audio, batched or not, the same text
    items, batches = _batch_totals(live)
    assert items - items_before == 8
    assert batches - batches_before < 8  # some requests were answered in one batch


def _denoising_steps(live: LiveServer) -> float:
    text = httpx.get(
        f"{live.url}/metrics", headers={"Authorization": f"Bearer {live.key}"}, timeout=10
    ).text
    match = re.search(r'^maas_denoising_steps_total{model="diffusion"} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def _abandon_a_long_image(live: LiveServer, client: openai.OpenAI) -> float:
    """Steps the model ran for a 60-step request whose client left after a second."""
    before = _denoising_steps(live)
    body = {"model": "diffusion", "prompt": "a cat", "size": "128x128", "steps": 60, "seed": 1}
    with pytest.raises(httpx.ReadTimeout):  # about 0.2-0.3 s a step here: it would take 12 s+
        httpx.post(
            f"{live.url}/v1/images/generations",
            json=body,
            headers={"Authorization": f"Bearer {live.key}"},
            timeout=1.0,
        )
    # One pipeline call at a time: this image starts once the abandoned one has stopped.
    client.images.generate(model="diffusion", prompt="a dog", extra_body={"steps": 1})
    return _denoising_steps(live) - before - 1


def test_an_image_whose_client_leaves_stops_denoising(
    live: LiveServer, client: openai.OpenAI
) -> None:
    assert _abandon_a_long_image(live, client) < 60
    usage = httpx.get(
        f"{live.url}/admin/v1/usage?group_by=status&model=diffusion",
        headers={"Authorization": f"Bearer {live.key}"},
        timeout=10,
    ).json()["data"]
    assert 499 in {row["status"] for row in usage}  # metered as the client that left


# openai 3.x marks audio.translations deprecated (OpenAI's newer models do not translate);
# the route is still OpenAI's and maas serves it.
@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_a_translation_answers_text(client: openai.OpenAI, recordings: dict[str, Path]) -> None:
    assert client.audio.translations.create(model="whisper", file=recordings["wav"]).text


def test_speech_is_a_wav_of_plausible_length(client: openai.OpenAI) -> None:
    text = "a model service speaks this sentence back"
    speech = client.audio.speech.create(
        model="vits", voice="alloy", input=text, response_format="wav"
    )
    data, rate = soundfile.read(io.BytesIO(speech.read()), dtype="float32")
    assert rate == 16_000
    seconds = data.shape[0] / rate
    # About 15 characters a second in speech; a random VITS is not precise.
    assert len(text) / 60 < seconds < len(text) / 3


def test_speech_streams_as_it_is_encoded(live: LiveServer) -> None:
    body = {"model": "vits", "input": "stream this " * 20, "response_format": "pcm"}
    headers = {"Authorization": f"Bearer {live.key}"}
    with httpx.stream(
        "POST", f"{live.url}/v1/audio/speech", json=body, headers=headers, timeout=60
    ) as r:
        assert r.status_code == 200
        assert "content-length" not in r.headers  # chunked: sent block by block
        chunks = [c for c in r.iter_raw() if c]
    assert sum(len(c) for c in chunks) % 2 == 0  # whole 16-bit samples


def _png(data: object) -> bytes:
    return base64.b64decode(data.b64_json)  # type: ignore[attr-defined]


def test_a_seed_gives_the_same_png_twice_and_another_seed_another(client: openai.OpenAI) -> None:
    def one(seed: int) -> bytes:
        answer = client.images.generate(
            model="diffusion", prompt="a lighthouse", extra_body={"seed": seed, "steps": 2}
        )
        return _png(answer.data[0])  # type: ignore[index]

    first = one(21)
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    assert one(21) == first
    assert one(22) != first


def test_n_two_returns_two_images(client: openai.OpenAI) -> None:
    answer = client.images.generate(
        model="diffusion", prompt="two boats", n=2, size="32x32", extra_body={"steps": 2}
    )
    assert answer.data is not None and len(answer.data) == 2
    assert _png(answer.data[0]) != _png(answer.data[1])


@pytest.mark.parametrize("route", ["transcription", "speech", "image"])
def test_each_endpoint_answers_404_400_and_401_in_openai_shape(
    client: openai.OpenAI, live: LiveServer, recordings: dict[str, Path], route: str
) -> None:
    def call(c: openai.OpenAI, model: str) -> object:
        if route == "transcription":
            return c.audio.transcriptions.create(model=model, file=recordings["wav"])
        if route == "speech":
            return c.audio.speech.create(model=model, voice="alloy", input="hi")
        return c.images.generate(model=model, prompt="a cat", extra_body={"steps": 1})

    wrong = "vits" if route != "speech" else "whisper"
    with pytest.raises(openai.NotFoundError, match="nobody"):
        call(client, "nobody")
    with pytest.raises(openai.BadRequestError, match=r"is for .* not"):
        call(client, wrong)
    keyless = openai.OpenAI(base_url=f"{live.url}/v1", api_key="maas-sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        call(keyless, "nobody")


def test_empty_inputs_are_400_and_oversize_413(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="empty"):
        client.audio.transcriptions.create(model="whisper", file=("e.wav", b"", "audio/wav"))
    with pytest.raises(openai.BadRequestError, match="input"):
        client.audio.speech.create(model="vits", voice="alloy", input="")
    with pytest.raises(openai.BadRequestError, match="prompt"):
        client.images.generate(model="diffusion", prompt=" ")
    big = b"\0" * (MAX_AUDIO_BYTES + 1)
    with pytest.raises(openai.APIStatusError, match="MAAS_MAX_AUDIO_BYTES") as caught:
        client.audio.transcriptions.create(model="whisper", file=("big.wav", big, "audio/wav"))
    assert caught.value.status_code == 413
    with pytest.raises(openai.APIStatusError, match="MAAS_MAX_SPEECH_INPUT_CHARS") as caught:
        client.audio.speech.create(model="vits", voice="alloy", input="x" * 4097)
    assert caught.value.status_code == 413
    with pytest.raises(openai.APIStatusError, match="MAAS_MAX_IMAGE_PIXELS") as caught:
        client.images.generate(model="diffusion", prompt="a cat", size="4096x4096")
    assert caught.value.status_code == 413


@pytest.mark.slow
def test_with_two_workers_the_engine_process_serves_the_media_models(
    tmp_path_factory: pytest.TempPathFactory, recordings: dict[str, Path]
) -> None:
    """Items and answers cross the engine wire (msgpack) between the workers and the engine,
    the images-per-minute window is counted there, and a cancelled image stops there."""
    home = tmp_path_factory.mktemp("media-workers")
    registry = Registry(Settings(home=home))
    try:
        registry.push(built("whisper", tmp_path_factory), "whisper")
        registry.push(built("vits", tmp_path_factory), "vits")
        registry.push(built("diffusion", tmp_path_factory), "diffusion")
    finally:
        registry.close()
    for live in start_server(home, {"MAAS_WORKERS": "2", "MAAS_IMAGES_PER_MINUTE": "1"}):
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key=live.key, max_retries=0)
        verbose = client.audio.transcriptions.create(
            model="whisper", file=recordings["ogg"], response_format="verbose_json"
        )
        assert verbose.text and verbose.segments
        speech = client.audio.speech.create(
            model="vits", voice="alloy", input="hello", response_format="flac"
        )
        assert soundfile.info(io.BytesIO(speech.read())).samplerate == 16_000
        images = client.images.generate(
            model="diffusion", prompt="a cat", extra_body={"seed": 1, "steps": 1}
        )
        assert images.data and images.data[0].b64_json
        # The images-per-minute window lives in the engine, shared by both workers.
        with pytest.raises(openai.RateLimitError, match="1 images per minute"):
            client.images.generate(model="diffusion", prompt="a cat", extra_body={"steps": 1})
    # Cancelling reaches the engine process too (a server without the images limit).
    for live in start_server(home, {"MAAS_WORKERS": "2"}):
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key=live.key, max_retries=0)
        assert _abandon_a_long_image(live, client) < 60
