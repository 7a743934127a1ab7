"""``/v1/audio/*`` and ``/v1/images/generations`` in process, on tiny random models."""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Iterator

import numpy as np
import pytest
import soundfile
from fastapi.testclient import TestClient
from PIL import Image

from maas.api.app import create_app
from maas.config import Settings
from maas.registry.store import Registry
from tests.media_models import built, speak

MAX_AUDIO_BYTES = 400_000
SRT_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)$")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict[str, str]]]:
    home = tmp_path_factory.mktemp("media-home")
    settings = Settings(
        home=home, max_audio_bytes=MAX_AUDIO_BYTES, max_speech_input_chars=500, max_wait_ms=5
    )
    registry = Registry(settings)
    try:
        registry.push(built("whisper", tmp_path_factory), "whisper")
        registry.push(built("vits", tmp_path_factory), "vits")
        registry.push(built("diffusion", tmp_path_factory), "diffusion")
        # The same models under a PII policy that refuses personal data in their inputs.
        blocked = {"pii_policy": "block:input"}
        registry.push(built("vits", tmp_path_factory), "vits-pii", tags=blocked)
        registry.push(built("diffusion", tmp_path_factory), "diffusion-pii", tags=blocked)
    finally:
        registry.close()
    with TestClient(create_app(settings)) as client:
        key = settings.admin_key_file.read_text().strip()
        yield client, {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = speak("hello there, how are you today", tmp_path_factory.mktemp("wav") / "s.wav")
    return path.read_bytes()


def _transcribe(
    client: TestClient,
    auth: dict[str, str],
    audio: bytes,
    *,
    route: str = "transcriptions",
    **fields: str,
) -> object:
    return client.post(
        f"/v1/audio/{route}",
        files={"file": ("speech.wav", audio, "audio/wav")},
        data={"model": "whisper", **fields},
        headers=auth,
    )


def test_a_transcription_answers_json_text_and_usage_seconds(
    served: tuple[TestClient, dict[str, str]], speech: bytes
) -> None:
    client, auth = served
    r = _transcribe(client, auth, speech)
    assert r.status_code == 200, r.text  # type: ignore[attr-defined]
    body = r.json()  # type: ignore[attr-defined]
    assert body["text"]
    seconds = soundfile.info(io.BytesIO(speech)).duration
    assert body["usage"] == {"type": "duration", "seconds": math.ceil(seconds)}
    assert r.headers["x-maas-model-version"] == "whisper:1"  # type: ignore[attr-defined]
    plain = _transcribe(client, auth, speech, response_format="text")
    assert plain.text.strip() == body["text"]  # type: ignore[attr-defined]


def test_srt_and_vtt_cues_have_increasing_times(
    served: tuple[TestClient, dict[str, str]], speech: bytes
) -> None:
    client, auth = served
    srt = _transcribe(client, auth, speech, response_format="srt").text  # type: ignore[attr-defined]
    times = [SRT_TIME.match(line) for line in srt.splitlines() if "-->" in line]
    assert times and all(times)
    seconds = [
        (int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3]) + int(m[4]) / 1000) for m in times if m
    ]
    assert seconds == sorted(seconds)
    vtt = _transcribe(client, auth, speech, response_format="vtt").text  # type: ignore[attr-defined]
    assert vtt.startswith("WEBVTT\n\n")
    assert all("." in line for line in vtt.splitlines() if "-->" in line)


def test_verbose_json_segments_cover_the_audio(
    served: tuple[TestClient, dict[str, str]], speech: bytes
) -> None:
    client, auth = served
    r = _transcribe(
        client,
        auth,
        speech,
        response_format="verbose_json",
        **{"timestamp_granularities[]": "segment"},
    )
    body = r.json()  # type: ignore[attr-defined]
    assert body["task"] == "transcribe"
    assert body["duration"] == round(soundfile.info(io.BytesIO(speech)).duration, 3)
    segments = body["segments"]
    assert segments[0]["start"] == 0.0 and segments[-1]["end"] == body["duration"]
    assert body["language"] in ("english", "french", "german")


def test_a_translation_is_served(served: tuple[TestClient, dict[str, str]], speech: bytes) -> None:
    client, auth = served
    r = _transcribe(client, auth, speech, route="translations")
    assert r.status_code == 200 and r.json()["text"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("audio", "fields", "status", "words"),
    [
        (b"", {}, 400, "empty"),
        (b"not audio at all " * 100, {}, 400, "not audio"),
        (b"x" * (MAX_AUDIO_BYTES + 1), {}, 413, "MAAS_MAX_AUDIO_BYTES"),
        (None, {"model": "nobody"}, 404, "nobody"),
        (None, {"model": "vits"}, 400, "text-to-speech, not automatic-speech-recognition"),
        (None, {"language": "xx"}, 400, "language 'xx'"),
        (None, {"response_format": "docx"}, 400, "response_format"),
        (
            None,
            {"timestamp_granularities[]": "word", "response_format": "verbose_json"},
            400,
            "word",
        ),
    ],
)
def test_a_bad_transcription_request_is_refused_in_openai_shape(
    served: tuple[TestClient, dict[str, str]],
    speech: bytes,
    audio: bytes | None,
    fields: dict[str, str],
    status: int,
    words: str,
) -> None:
    client, auth = served
    r = _transcribe(client, auth, speech if audio is None else audio, **fields)
    assert r.status_code == status, r.text  # type: ignore[attr-defined]
    assert words in r.json()["error"]["message"]  # type: ignore[attr-defined]


def test_audio_routes_need_a_key(served: tuple[TestClient, dict[str, str]], speech: bytes) -> None:
    client, _ = served
    assert _transcribe(client, {}, speech).status_code == 401  # type: ignore[attr-defined]
    r = client.post("/v1/audio/speech", json={"model": "vits", "input": "hi"})
    assert r.status_code == 401
    r = client.post("/v1/images/generations", json={"model": "diffusion", "prompt": "a cat"})
    assert r.status_code == 401


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus"])
def test_speech_comes_back_in_the_asked_format(
    served: tuple[TestClient, dict[str, str]], fmt: str
) -> None:
    client, auth = served
    text = "good morning to all of you"
    r = client.post(
        "/v1/audio/speech",
        json={"model": "vits", "input": text, "voice": "alloy", "response_format": fmt},
        headers=auth,
    )
    assert r.status_code == 200, r.text
    data, rate = soundfile.read(io.BytesIO(r.content), dtype="float32")
    seconds = data.shape[0] / rate
    assert 0.05 * len(text) / 15 < seconds < 20 * len(text) / 15  # ~15 characters a second
    assert r.headers["x-maas-sample-rate"] == "16000"


def test_pcm_is_raw_16_bit_samples(served: tuple[TestClient, dict[str, str]]) -> None:
    client, auth = served
    body = {"model": "vits", "input": "hello", "response_format": "pcm"}
    r = client.post("/v1/audio/speech", json=body, headers=auth)
    assert r.status_code == 200 and r.headers["content-type"] == "audio/pcm"
    samples = np.frombuffer(r.content, dtype="<i2")
    assert samples.shape[0] > 100


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"model": "vits", "input": ""}, 400, "input"),
        ({"model": "vits", "input": "x" * 501}, 413, "MAAS_MAX_SPEECH_INPUT_CHARS"),
        ({"model": "nobody", "input": "hi"}, 404, "nobody"),
        ({"model": "whisper", "input": "hi"}, 400, "not text-to-speech"),
        ({"model": "vits", "input": "hi", "speed": 9}, 400, "speed"),
        ({"model": "vits", "input": "hi", "response_format": "aac"}, 400, "response_format"),
    ],
)
def test_a_bad_speech_request_is_refused(
    served: tuple[TestClient, dict[str, str]], body: dict[str, object], status: int, words: str
) -> None:
    client, auth = served
    r = client.post("/v1/audio/speech", json=body, headers=auth)
    assert r.status_code == status, r.text
    assert words in r.text


def _images(client: TestClient, auth: dict[str, str], **body: object) -> list[bytes]:
    r = client.post(
        "/v1/images/generations",
        json={"model": "diffusion", "prompt": "a red cat", "steps": 2, **body},
        headers=auth,
    )
    assert r.status_code == 200, r.text
    return [base64.b64decode(d["b64_json"]) for d in r.json()["data"]]


def test_a_seed_makes_the_same_png_and_another_seed_another(
    served: tuple[TestClient, dict[str, str]],
) -> None:
    client, auth = served
    first = _images(client, auth, seed=11)
    assert first == _images(client, auth, seed=11)
    assert first != _images(client, auth, seed=12)
    assert Image.open(io.BytesIO(first[0])).format == "PNG"


def test_n_images_come_back_each_different(served: tuple[TestClient, dict[str, str]]) -> None:
    client, auth = served
    images = _images(client, auth, n=2, seed=3, size="32x32")
    assert len(images) == 2 and images[0] != images[1]
    assert Image.open(io.BytesIO(images[1])).size == (32, 32)
    # image i of n uses seed + i
    assert images[1] == _images(client, auth, seed=4, size="32x32")[0]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"prompt": " "}, 400, "prompt"),
        ({"size": "4096x4096"}, 413, "MAAS_MAX_IMAGE_PIXELS"),
        ({"size": "big"}, 400, "size"),
        ({"model": "nobody"}, 404, "nobody"),
        ({"model": "vits"}, 400, "not text-to-image"),
        ({"n": 11}, 400, "n"),
        ({"response_format": "url"}, 400, "response_format"),
    ],
)
def test_a_bad_image_request_is_refused(
    served: tuple[TestClient, dict[str, str]], body: dict[str, object], status: int, words: str
) -> None:
    client, auth = served
    full = {"model": "diffusion", "prompt": "a cat", "steps": 1, **body}
    r = client.post("/v1/images/generations", json=full, headers=auth)
    assert r.status_code == status, r.text
    assert words in r.text


def test_the_models_list_shows_the_media_tasks(served: tuple[TestClient, dict[str, str]]) -> None:
    client, auth = served
    tasks = {m["id"]: m["task"] for m in client.get("/v1/models", headers=auth).json()["data"]}
    assert tasks == {
        "whisper": "automatic-speech-recognition",
        "vits": "text-to-speech",
        "vits-pii": "text-to-speech",
        "diffusion": "text-to-image",
        "diffusion-pii": "text-to-image",
    }


def test_usage_records_audio_seconds_and_images(
    served: tuple[TestClient, dict[str, str]], speech: bytes
) -> None:
    client, auth = served
    created = client.post(
        "/admin/v1/keys", json={"name": "media", "scopes": ["infer"]}, headers=auth
    )
    key_id = created.json()["info"]["id"]
    key = {"Authorization": f"Bearer {created.json()['key']}"}
    assert _transcribe(client, key, speech).status_code == 200  # type: ignore[attr-defined]
    assert len(_images(client, key, n=2, seed=1)) == 2
    r = client.post("/v1/audio/speech", json={"model": "vits", "input": "hello"}, headers=key)
    assert r.status_code == 200
    spoken = soundfile.info(io.BytesIO(r.content)).duration
    rows = client.get(f"/admin/v1/usage?key={key_id}&group_by=route", headers=auth).json()["data"]
    by_route = {row["route"]: row for row in rows}
    heard = soundfile.info(io.BytesIO(speech)).duration
    assert by_route["transcriptions"]["audio_seconds"] == pytest.approx(heard, abs=0.01)
    assert by_route["transcriptions"]["completion_tokens"] > 0
    assert by_route["images"]["images"] == 2 and by_route["images"]["items"] == 2
    assert by_route["speech"]["audio_seconds"] == pytest.approx(spoken, abs=0.1)


def test_images_per_minute_are_limited_per_key(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    home = tmp_path_factory.mktemp("images-limit")
    settings = Settings(home=home, images_per_minute=3)
    registry = Registry(settings)
    try:
        registry.push(built("diffusion", tmp_path_factory), "diffusion")
    finally:
        registry.close()
    with TestClient(create_app(settings)) as client:
        admin = {"Authorization": f"Bearer {settings.admin_key_file.read_text().strip()}"}
        keys = []
        for name in ("first", "second"):
            r = client.post(
                "/admin/v1/keys", json={"name": name, "scopes": ["infer"]}, headers=admin
            )
            keys.append({"Authorization": f"Bearer {r.json()['key']}"})
        body = {"model": "diffusion", "prompt": "a cat", "steps": 1, "n": 2}
        assert client.post("/v1/images/generations", json=body, headers=keys[0]).status_code == 200
        refused = client.post("/v1/images/generations", json=body, headers=keys[0])
        assert refused.status_code == 429, refused.text
        assert "3 images per minute" in refused.json()["error"]["message"]
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        # what fits still goes, and another key has its own window
        one = {**body, "n": 1}
        assert client.post("/v1/images/generations", json=one, headers=keys[0]).status_code == 200
        assert client.post("/v1/images/generations", json=body, headers=keys[1]).status_code == 200
        too_many = client.post("/v1/images/generations", json={**body, "n": 4}, headers=keys[1])
        assert too_many.status_code == 429 and "whole limit" in too_many.text


def _metric(text: str, name: str) -> float:
    match = re.search(rf'^{name}{{model="diffusion"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_denoising_progress_is_in_the_metrics(served: tuple[TestClient, dict[str, str]]) -> None:
    client, auth = served
    before = _metric(client.get("/metrics", headers=auth).text, "maas_denoising_steps_total")
    _images(client, auth, n=2, steps=3, seed=5)
    text = client.get("/metrics", headers=auth).text
    # Both images denoise in one batch: three steps of it, and it ended.
    assert _metric(text, "maas_denoising_steps_total") - before == 3
    assert _metric(text, "maas_denoising_progress_ratio") == 1.0


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/v1/audio/speech", {"model": "vits-pii", "input": "{text}"}),
        ("/v1/images/generations", {"model": "diffusion-pii", "prompt": "{text}", "steps": 1}),
    ],
)
def test_the_model_pii_policy_screens_spoken_text_and_prompts(
    served: tuple[TestClient, dict[str, str]], route: str, body: dict[str, object]
) -> None:
    client, auth = served

    def send(text: str) -> object:
        filled = {k: v.format(text=text) if isinstance(v, str) else v for k, v in body.items()}
        return client.post(route, json=filled, headers=auth)

    assert send("write to me soon").status_code == 200  # type: ignore[attr-defined]
    refused = send("write to alice.smith@example.com soon")
    assert refused.status_code == 400, refused.text  # type: ignore[attr-defined]
    assert "email" in refused.text.lower()  # type: ignore[attr-defined]
