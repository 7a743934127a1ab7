"""Image classification with a Hugging Face image-classification model.

Preprocessing is done here with PIL + numpy rather than with transformers'
image processors: the recipe is small, it is the part of the pipeline a client
most needs to reproduce exactly, and keeping it in one readable place makes it
testable against a hand computation. It follows the keys of
``preprocessor_config.json`` in the order transformers applies them:
resize -> center crop -> rescale -> normalize, then HWC -> CHW.

Items of a batch are one of:

* ``bytes`` (or ``bytearray``/``memoryview``): an encoded image in any format
  PIL reads (PNG, JPEG, WebP, GIF, ...); EXIF orientation is applied and the
  image converted to RGB over a white background, as transformers'
  ``load_image`` and ``convert_to_rgb`` do;
* a numpy array of raw pixels, ``(H, W, 3)`` uint8 RGB, preprocessed like a
  decoded image;
* a numpy array already preprocessed, ``(3, H, W)`` float32, fed to the model
  as is (it must have the model's input size when that size is fixed).

An item that cannot be used fails only its own slot with an
``InvalidRequestError`` naming its index; the rest of the batch is served.
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from maas.errors import InvalidRequestError
from maas.runtimes.base import Runtime, TensorSpec, module_bytes

PREPROCESSOR_CONFIG = "preprocessor_config.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 224
# Refuse to decode images above this many pixels (a 8192 x 8192 image): the
# header is read first, so an oversized upload costs nothing to reject.
MAX_IMAGE_PIXELS = 8192 * 8192
# PIL resampling filters by the integer transformers stores in the config
# (``PILImageResampling`` uses PIL's own numbering).
_RESAMPLE = {
    0: Image.Resampling.NEAREST,
    1: Image.Resampling.LANCZOS,
    2: Image.Resampling.BILINEAR,
    3: Image.Resampling.BICUBIC,
    4: Image.Resampling.BOX,
    5: Image.Resampling.HAMMING,
}

ImageInput = bytes | bytearray | memoryview | np.ndarray


@dataclass(frozen=True, slots=True)
class ImageClassification:
    labels: list[tuple[str, float]]  # every label with its probability, best first


def _pair(value: Any, key: str) -> tuple[int, int]:
    """A ``size``/``crop_size`` entry as (height, width); an int means a square."""
    if isinstance(value, int):
        return value, value
    if isinstance(value, Mapping) and "height" in value and "width" in value:
        return int(value["height"]), int(value["width"])
    raise InvalidRequestError(
        f"{PREPROCESSOR_CONFIG}: {key} must be an int or {{height, width}}, got {value!r}"
    )


def _channels(value: Any, default: tuple[float, ...], key: str) -> np.ndarray:
    """Per-channel mean/std as (3,) float32; a single number applies to every channel."""
    arr = np.asarray(default if value is None else value, dtype=np.float32).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, 3)
    if arr.shape != (3,):
        raise InvalidRequestError(f"{PREPROCESSOR_CONFIG}: {key} must have 3 values, got {value!r}")
    return arr


@dataclass(frozen=True, slots=True)
class ImagePreprocessing:
    """The ``preprocessor_config.json`` recipe, applied to one RGB PIL image."""

    do_resize: bool = True
    # Exactly one of these is set when resizing: a fixed (height, width), or the
    # length the shorter edge is scaled to (aspect ratio kept).
    resize_to: tuple[int, int] | None = (DEFAULT_SIZE, DEFAULT_SIZE)
    shortest_edge: int | None = None
    resample: Image.Resampling = Image.Resampling.BILINEAR
    crop_to: tuple[int, int] | None = None  # (height, width) of the center crop, if any
    rescale_factor: float | None = 1 / 255
    mean: np.ndarray | None = None  # (3,) float32; None when do_normalize is off
    std: np.ndarray | None = None  # (3,) float32

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ImagePreprocessing:
        """Read the keys transformers writes, with ImageNet defaults for absent ones."""
        size = config.get("size", DEFAULT_SIZE)
        resize_to: tuple[int, int] | None = None
        shortest: int | None = None
        crop_to: tuple[int, int] | None = None
        if isinstance(size, Mapping) and "shortest_edge" in size:
            shortest = int(size["shortest_edge"])
            crop_pct = config.get("crop_pct")
            if crop_pct is not None and shortest < 384:
                # ConvNeXt/ResNet recipe: resize the short edge to size/crop_pct,
                # then center crop a size x size square.
                crop_to = (shortest, shortest)
                shortest = int(shortest / float(crop_pct))
        else:
            resize_to = _pair(size, "size")
        if config.get("do_center_crop", False):
            crop_to = _pair(config.get("crop_size", DEFAULT_SIZE), "crop_size")
        resample = _RESAMPLE.get(int(config.get("resample", 2)))
        if resample is None:
            raise InvalidRequestError(
                f"{PREPROCESSOR_CONFIG}: unknown resample filter {config.get('resample')!r}"
            )
        do_normalize = bool(config.get("do_normalize", True))
        for key, value in (("size", resize_to), ("crop_size", crop_to)):
            if value is not None and min(value) <= 0:
                raise InvalidRequestError(f"{PREPROCESSOR_CONFIG}: {key} must be positive")
        if shortest is not None and shortest <= 0:
            raise InvalidRequestError(f"{PREPROCESSOR_CONFIG}: size must be positive")
        return cls(
            do_resize=bool(config.get("do_resize", True)),
            resize_to=resize_to,
            shortest_edge=shortest,
            resample=resample,
            crop_to=crop_to,
            rescale_factor=(
                float(config.get("rescale_factor", 1 / 255))
                if config.get("do_rescale", True)
                else None
            ),
            mean=_channels(config.get("image_mean"), IMAGENET_MEAN, "image_mean")
            if do_normalize
            else None,
            std=_channels(config.get("image_std"), IMAGENET_STD, "image_std")
            if do_normalize
            else None,
        )

    @property
    def output_size(self) -> tuple[int, int] | None:
        """The (height, width) every image ends up with, or None if it varies per image."""
        if self.crop_to is not None:
            return self.crop_to
        if self.do_resize and self.resize_to is not None:
            return self.resize_to
        return None

    def _resized(self, image: Image.Image) -> Image.Image:
        if not self.do_resize:
            return image
        if self.resize_to is not None:
            height, width = self.resize_to
        else:
            assert self.shortest_edge is not None
            # Same rounding as transformers' get_resize_output_image_size.
            w, h = image.size
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
            width, height = (new_short, new_long) if w <= h else (new_long, new_short)
        if (width, height) == image.size:
            return image
        return image.resize((width, height), resample=self.resample)

    def _cropped(self, pixels: np.ndarray) -> np.ndarray:
        """Center crop (H, W, 3) -> (crop_h, crop_w, 3), zero-padding a smaller image."""
        if self.crop_to is None:
            return pixels
        crop_h, crop_w = self.crop_to
        h, w = pixels.shape[:2]
        if h < crop_h or w < crop_w:
            pad_h, pad_w = max(crop_h - h, 0), max(crop_w - w, 0)
            pixels = np.pad(
                pixels,
                ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)),
            )
            h, w = pixels.shape[:2]
        top, left = (h - crop_h) // 2, (w - crop_w) // 2
        return pixels[top : top + crop_h, left : left + crop_w]

    def __call__(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> (3, H, W) float32 model input."""
        pixels = np.asarray(self._resized(image), dtype=np.float32)  # (H, W, 3), 0..255
        pixels = self._cropped(pixels)  # (H', W', 3)
        if self.rescale_factor is not None:
            pixels = pixels * np.float32(self.rescale_factor)
        if self.mean is not None and self.std is not None:
            pixels = (pixels - self.mean) / self.std  # broadcast over the channel axis
        return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)  # (3, H', W')


def decode_image(data: bytes | bytearray | memoryview) -> Image.Image:
    """Encoded image bytes -> RGB PIL image (EXIF orientation applied).

    Raises ValueError with a short reason when the bytes are not a usable image.
    PIL signals undecodable input with many types (UnidentifiedImageError,
    OSError for truncation, SyntaxError/EOFError/struct.error from plugins,
    DecompressionBombError); all of them mean "not a usable image" here.
    """
    try:
        image = Image.open(io.BytesIO(bytes(data)))  # reads the header only
    except Exception as exc:
        raise ValueError(f"not a readable image ({type(exc).__name__}: {exc})") from exc
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(f"image is {width}x{height}, more than {MAX_IMAGE_PIXELS} pixels")
    try:
        image.load()
        return to_rgb(ImageOps.exif_transpose(image))
    except Exception as exc:
        raise ValueError(f"not a readable image ({type(exc).__name__}: {exc})") from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparent pixels become white, as in transformers' convert_to_rgb.

    Dropping alpha instead would expose whatever colour the transparent pixels
    happen to store (often black), which the model never saw in training.
    """
    if image.mode == "RGB":
        return image
    if "A" not in image.getbands() and "transparency" not in image.info:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


class HFImageClassificationRuntime(Runtime):
    task = "image-classification"
    formats = ("hf",)

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self._model: Any = None
        self._labels: list[str] = []
        self._preprocess = ImagePreprocessing()

    @property
    def preprocessing(self) -> ImagePreprocessing:
        return self._preprocess

    async def load(self) -> None:
        await self.run(self._load_sync)

    def _load_sync(self) -> None:
        import torch
        from transformers import AutoModelForImageClassification

        if self.context.torch_threads:
            torch.set_num_threads(self.context.torch_threads)
        root = Path(self.context.model_dir)
        self._preprocess = ImagePreprocessing.from_config(_read_preprocessor_config(root))
        model = AutoModelForImageClassification.from_pretrained(str(root), dtype=torch.float32)
        model.eval()
        self._model = model
        config = model.config
        self._labels = [str(config.id2label[i]) for i in range(config.num_labels)]
        # First forward allocates; keep it out of requests.
        height, width = self._preprocess.output_size or _config_image_size(config)
        warm = np.full((height, width, 3), 128, dtype=np.uint8)
        self._predict_sync([warm])

    @property
    def labels(self) -> list[str]:
        """Label names in the model's index order (the order of ``probabilities``)."""
        return list(self._labels)

    async def unload(self) -> None:
        self._model = None

    async def predict(self, batch: Sequence[Any]) -> Sequence[ImageClassification | BaseException]:
        return await self.run(self._predict_sync, list(batch))

    def _predict_sync(self, batch: list[Any]) -> list[ImageClassification | BaseException]:
        results: list[ImageClassification | BaseException] = []
        # Images of one size are stacked into one forward; with a fixed model
        # input size (the usual case) that is the whole batch.
        by_shape: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = defaultdict(list)
        for i, item in enumerate(batch):
            try:
                pixels = self._pixels(item)  # (3, H, W) float32
            except ValueError as exc:
                error = InvalidRequestError(str(exc), param="input")
                error.__cause__ = exc
                results.append(error)
                continue
            results.append(InvalidRequestError("pending"))  # replaced below
            by_shape[pixels.shape].append((i, pixels))
        for group in by_shape.values():
            stacked = np.stack([pixels for _, pixels in group])  # (batch, 3, H, W)
            for (i, _), ranked in zip(group, self._classify(stacked), strict=True):
                results[i] = ranked
        return results

    def _pixels(self, item: Any) -> np.ndarray:
        """One batch item -> (3, H, W) float32; ValueError says why it is unusable."""
        if isinstance(item, bytes | bytearray | memoryview):
            return self._preprocess(decode_image(item))
        if not isinstance(item, np.ndarray):
            raise ValueError(
                f"expected encoded image bytes or a numpy array, got {type(item).__name__}"
            )
        if item.ndim == 3 and item.shape[2] == 3 and item.dtype == np.uint8:
            if min(item.shape[:2]) == 0:
                raise ValueError(f"image of shape {item.shape} has no pixels")
            return self._preprocess(Image.fromarray(np.ascontiguousarray(item)))  # (H, W, 3) RGB
        if item.ndim == 3 and item.shape[0] == 3 and item.dtype == np.float32:
            expected = self._preprocess.output_size
            if expected is not None and item.shape[1:] != expected:
                raise ValueError(
                    f"preprocessed image must have shape (3, {expected[0]}, {expected[1]}), "
                    f"got {item.shape}"
                )
            if min(item.shape[1:]) == 0 or not np.isfinite(item).all():
                raise ValueError("preprocessed image must be non-empty and finite")
            return np.ascontiguousarray(item)
        raise ValueError(
            "a numpy image must be raw pixels (H, W, 3) uint8 or preprocessed (3, H, W) "
            f"float32, got {item.shape} {item.dtype}"
        )

    def _classify(self, pixels: np.ndarray) -> list[ImageClassification]:
        import torch

        with torch.inference_mode():
            logits = self._model(pixel_values=torch.from_numpy(pixels)).logits  # (batch, labels)
            probs = torch.softmax(logits.float(), dim=-1).numpy()  # (batch, labels)
        out = []
        for row in probs:
            ranked = sorted(zip(self._labels, row.tolist(), strict=True), key=lambda p: -p[1])
            out.append(ImageClassification(labels=ranked))
        return out

    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("image", "BYTES", [-1])]

    def outputs(self) -> list[TensorSpec]:
        return [
            TensorSpec("label", "BYTES", [-1]),
            TensorSpec("probabilities", "FP32", [-1, len(self._labels)]),
        ]

    def memory_bytes(self) -> int:
        return module_bytes(self._model)


def _read_preprocessor_config(root: Path) -> dict[str, Any]:
    """The preprocessor config, or {} (all defaults) when the directory has none."""
    path = root / PREPROCESSOR_CONFIG
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequestError(f"{PREPROCESSOR_CONFIG} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidRequestError(f"{PREPROCESSOR_CONFIG} must hold a JSON object")
    return doc


def _config_image_size(config: Any) -> tuple[int, int]:
    """(height, width) to warm up with when the preprocessing does not fix one."""
    size = getattr(config, "image_size", None)
    if isinstance(size, int):
        return size, size
    if isinstance(size, list | tuple) and len(size) == 2:
        return int(size[0]), int(size[1])
    return DEFAULT_SIZE, DEFAULT_SIZE
