"""HFImageClassificationRuntime with a real tiny random ViT and real encoded images."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from transformers import AutoModelForImageClassification

from maas.config import Settings
from maas.errors import InvalidRequestError
from maas.registry.formats import detect_format
from maas.registry.schemas import VersionInfo
from maas.registry.store import Registry
from maas.runtimes.base import RuntimeContext, TensorSpec
from maas.runtimes.image_classification import (
    HFImageClassificationRuntime,
    ImageClassification,
    ImagePreprocessing,
    decode_image,
)
from maas.runtimes.registry import runtime_class
from maas.serving.manager import ModelManager
from maas.serving.metrics import ServingMetrics
from tests.helpers import make_tiny_image_classifier

LABELS = [f"digit-{i}" for i in range(10)]


def _digit_image(digit: int, *, size: tuple[int, int] = (40, 48)) -> Image.Image:
    """A drawn digit on a colour gradient: real image content, width x height = size."""
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    background = np.stack(
        [
            xs * 255 // max(width - 1, 1),
            ys * 255 // max(height - 1, 1),
            np.full_like(xs, 40 * digit),
        ],
        axis=-1,
    ).astype(np.uint8)  # (H, W, 3)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    draw.text((width // 3, height // 4), str(digit), fill=(255, 255, 255))
    draw.ellipse((2, 2, 6 + 3 * digit, 6 + 2 * digit), outline=(0, 0, 0))
    return image


def _encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def _probabilities(result: ImageClassification) -> np.ndarray:
    """(labels,) float64 in label-id order."""
    by_label = dict(result.labels)
    return np.array([by_label[label] for label in LABELS])


def _version(model_dir: Path) -> VersionInfo:
    return VersionInfo(
        model="digits",
        version=1,
        task="image-classification",
        format="hf",
        digest="sha256:" + "0" * 64,
        size_bytes=sum(p.stat().st_size for p in model_dir.iterdir()),
        status="ready",
        description="",
        metadata={},
        metrics={},
        params={},
        tags={},
        parent=None,
        job_id=None,
        aliases=[],
        created_at=datetime.now(UTC),
        created_by=None,
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_image_classifier(tmp_path_factory.mktemp("vit") / "tiny-vit")


@pytest.fixture(scope="module")
def runtime(model_dir: Path) -> Iterator[HFImageClassificationRuntime]:
    executor = ThreadPoolExecutor(1)
    rt = HFImageClassificationRuntime(
        RuntimeContext(model_dir=model_dir, version=_version(model_dir), executor=executor)
    )
    asyncio.run(rt.load())
    yield rt
    asyncio.run(rt.unload())
    executor.shutdown()


def _predict(
    runtime: HFImageClassificationRuntime, batch: Sequence[Any]
) -> list[ImageClassification | BaseException]:
    return list(asyncio.run(runtime.predict(batch)))


def _ok(result: ImageClassification | BaseException) -> ImageClassification:
    assert isinstance(result, ImageClassification), result
    return result


def test_registry_maps_image_classification_hf_to_this_runtime() -> None:
    assert runtime_class("image-classification", "hf") is HFImageClassificationRuntime


def test_png_preprocessing_matches_a_hand_computed_resize_and_normalise(
    runtime: HFImageClassificationRuntime,
) -> None:
    png = _encode(_digit_image(3), "PNG")
    # Hand computation of the ViT recipe in preprocessor_config.json: bilinear
    # resize to 32x32, x / 255, (x - 0.5) / 0.5, HWC -> CHW.
    decoded = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))  # (48, 40, 3)
    resized = np.asarray(
        Image.fromarray(decoded).resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float64
    )  # (32, 32, 3)
    expected = ((resized / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)  # (3, 32, 32)

    pixels = runtime.preprocessing(decode_image(png))

    assert pixels.shape == (3, 32, 32)
    assert pixels.dtype == np.float32
    np.testing.assert_allclose(pixels, expected, rtol=0, atol=1e-6)


def test_box_resize_and_center_crop_match_block_means_computed_with_numpy() -> None:
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, size=(64, 40, 3), dtype=np.uint8)  # (H, W, 3)
    prep = ImagePreprocessing.from_config(
        {
            "size": {"shortest_edge": 20},
            "resample": 4,  # BOX: a 2x downscale is the mean of each 2x2 block
            "do_center_crop": True,
            "crop_size": {"height": 16, "width": 16},
            "image_mean": [0.1, 0.2, 0.3],
            "image_std": [0.5, 0.25, 0.125],
        }
    )
    # shortest edge 40 -> 20 keeps the aspect ratio: 64 x 40 -> 32 x 20 (H x W)
    blocks = raw.astype(np.float64).reshape(32, 2, 20, 2, 3).mean(axis=(1, 3))  # (32, 20, 3)
    top, left = (32 - 16) // 2, (20 - 16) // 2
    cropped = blocks[top : top + 16, left : left + 16]  # (16, 16, 3)
    std = np.array([0.5, 0.25, 0.125])
    expected = ((cropped / 255.0 - [0.1, 0.2, 0.3]) / std).transpose(2, 0, 1)  # (3, 16, 16)

    pixels = prep(Image.fromarray(raw))

    assert prep.output_size == (16, 16)
    assert pixels.shape == (3, 16, 16)
    # PIL resizes 8-bit images in 8-bit: each value may be off by one level.
    one_level = (1 / 255.0) / std.reshape(3, 1, 1) + 1e-6
    assert np.all(np.abs(pixels - expected) <= one_level)


def test_missing_preprocessor_keys_fall_back_to_224_and_imagenet_statistics() -> None:
    prep = ImagePreprocessing.from_config({})
    white = Image.new("RGB", (10, 20), (255, 255, 255))

    pixels = prep(white)

    assert pixels.shape == (3, 224, 224)
    expected = (1.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(pixels[:, 0, 0], expected, rtol=1e-6)


def test_probabilities_equal_the_model_run_directly_on_the_same_pixels(
    runtime: HFImageClassificationRuntime, model_dir: Path
) -> None:
    pngs = [_encode(_digit_image(d), "PNG") for d in range(4)]
    pixels = np.stack([runtime.preprocessing(decode_image(png)) for png in pngs])  # (4, 3, 32, 32)
    model = AutoModelForImageClassification.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    with torch.inference_mode():
        logits = model(pixel_values=torch.from_numpy(pixels)).logits  # (4, 10)
        reference = torch.softmax(logits, dim=-1).numpy()

    results = [_ok(r) for r in _predict(runtime, pngs)]

    for result, expected in zip(results, reference, strict=True):
        np.testing.assert_allclose(_probabilities(result), expected, rtol=0, atol=1e-5)
        probs = [p for _, p in result.labels]
        assert probs == sorted(probs, reverse=True)
        assert {label for label, _ in result.labels} == set(LABELS)


def test_png_and_jpeg_bytes_both_classify_as_their_decoded_pixels(
    runtime: HFImageClassificationRuntime,
) -> None:
    image = _digit_image(7)
    png, jpeg = _encode(image, "PNG"), _encode(image, "JPEG")
    jpeg_pixels = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))  # (48, 40, 3) lossy
    png_pixels = np.asarray(image)  # (48, 40, 3) exact

    results = [_ok(r) for r in _predict(runtime, [png, jpeg, png_pixels, jpeg_pixels])]

    np.testing.assert_allclose(_probabilities(results[0]), _probabilities(results[2]), atol=1e-6)
    np.testing.assert_allclose(_probabilities(results[1]), _probabilities(results[3]), atol=1e-6)
    for result in results:
        assert sum(p for _, p in result.labels) == pytest.approx(1.0, abs=1e-5)


def test_transparent_pixels_are_classified_as_white(
    runtime: HFImageClassificationRuntime,
) -> None:
    clear = Image.new("RGBA", (32, 32), (0, 0, 0, 0))  # black, fully transparent
    white = Image.new("RGB", (32, 32), (255, 255, 255))

    from_clear, from_white = (
        _ok(r) for r in _predict(runtime, [_encode(clear, "PNG"), _encode(white, "PNG")])
    )

    np.testing.assert_allclose(_probabilities(from_clear), _probabilities(from_white), atol=1e-6)


def test_a_preprocessed_float_array_is_fed_to_the_model_unchanged(
    runtime: HFImageClassificationRuntime,
) -> None:
    png = _encode(_digit_image(5), "PNG")
    pixels = runtime.preprocessing(decode_image(png))  # (3, 32, 32) float32

    from_bytes, from_array = (_ok(r) for r in _predict(runtime, [png, pixels]))

    np.testing.assert_allclose(_probabilities(from_bytes), _probabilities(from_array), atol=1e-6)


def test_undecodable_items_fail_only_their_own_slot(runtime: HFImageClassificationRuntime) -> None:
    good = [_encode(_digit_image(d), "PNG") for d in (1, 2)]
    alone = [_ok(r) for r in _predict(runtime, good)]
    batch: list[Any] = [
        good[0],
        b"\x89PNG\r\n\x1a\n definitely not the rest of a png",
        good[1],
        np.zeros((5, 5), dtype=np.float32),  # neither (3, H, W) nor (H, W, 3)
        np.zeros((3, 16, 16), dtype=np.float32),  # wrong size for a 32x32 model
        _encode(_digit_image(4), "PNG")[:60],  # truncated
        "a string is not an image",
    ]

    results = _predict(runtime, batch)

    assert len(results) == len(batch)
    for i, expected in ((0, alone[0]), (2, alone[1])):
        np.testing.assert_allclose(
            _probabilities(_ok(results[i])), _probabilities(expected), atol=1e-6
        )
    for i in (1, 3, 4, 5, 6):
        error = results[i]
        assert isinstance(error, InvalidRequestError)
        assert error.param == "input"
    assert "not a readable image" in str(results[1])
    assert "(3, 32, 32)" in str(results[4])


def test_signature_and_memory_describe_the_loaded_model(
    runtime: HFImageClassificationRuntime,
) -> None:
    params = sum(p.numel() for p in runtime._model.parameters())

    assert runtime.inputs() == [TensorSpec("image", "BYTES", [-1])]
    assert runtime.outputs() == [
        TensorSpec("label", "BYTES", [-1]),
        TensorSpec("probabilities", "FP32", [-1, 10]),
    ]
    assert runtime.memory_bytes() >= params * 4


def test_pushed_model_is_detected_loaded_by_the_manager_and_serves_requests(
    registry: Registry, settings: Settings, model_dir: Path
) -> None:
    assert detect_format(model_dir).task_hint == "image-classification"
    registry.push(model_dir, "digits", task="image-classification")
    version = registry.resolve("digits")
    png = _encode(_digit_image(9), "PNG")

    async def scenario() -> tuple[ImageClassification, BaseException]:
        manager = ModelManager(registry, settings, ServingMetrics())
        try:
            model = await manager.get(version)
            assert isinstance(model.runtime, HFImageClassificationRuntime)
            good, bad = await asyncio.gather(
                model.batcher.submit(png), model.batcher.submit(b"garbage"), return_exceptions=True
            )
            assert isinstance(good, ImageClassification)
            assert isinstance(bad, BaseException)
            return good, bad
        finally:
            await manager.close()

    good, bad = asyncio.run(scenario())

    assert version.task == "image-classification"
    assert version.format == "hf"
    assert {label for label, _ in good.labels} == set(LABELS)
    assert sum(p for _, p in good.labels) == pytest.approx(1.0, abs=1e-5)
    assert isinstance(bad, InvalidRequestError)
