"""Text to image with a diffusers pipeline (a ``model_index.json`` directory, safetensors).

A batch item is an ``ImagePrompt``; the answer a ``GeneratedImage`` (PNG bytes
and the seed it was made with). Items of a batch with the same size, steps and
guidance are denoised together in one pipeline call, each with its own
``torch.Generator`` seeded from its ``seed``: the latents an item starts from
depend only on its seed, so the same seed gives the same image whatever else
shares the batch.

One pipeline per loaded version. Denoising steps run under a lock: a pipeline
keeps its scheduler's state (timesteps, step index) on itself, so two calls on
one pipeline at once would corrupt each other.

Cancellation: ``cancel(request)`` (the serving layer calls it when the client
went away) marks a request. Its items that have not started are answered with
an error at once; a pipeline call whose every image belongs to marked requests
stops after the step it is in (diffusers' ``interrupt``). A call that also
holds images of other requests runs on for them. Marks are forgotten after
``CANCEL_MEMORY_SECONDS``.
"""

from __future__ import annotations

import io
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maas.errors import InvalidRequestError, UnavailableError
from maas.runtimes.base import Runtime, TensorSpec, intra_op_threads, module_bytes

MAX_STEPS = 150
CANCEL_MEMORY_SECONDS = 300.0
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 7.5


@dataclass(frozen=True, slots=True)
class ImagePrompt:
    prompt: str
    seed: int
    width: int = 0  # 0: the model's native size
    height: int = 0
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    negative_prompt: str | None = None
    request: str = ""  # the request it belongs to, for ``cancel`` ("" = not cancellable)


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    png: bytes
    seed: int
    width: int
    height: int
    steps: int


class DiffusersTextToImageRuntime(Runtime):
    task = "text-to-image"
    formats = ("diffusers",)

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self._pipeline: Any = None
        self._native = (512, 512)  # (width, height)
        self._multiple = 8  # width and height must be multiples of this
        self._lock = threading.Lock()
        # Called after every denoising step with (steps done, steps in the call): progress.
        self.on_step: Callable[[int, int], None] | None = None
        self._cancelled: dict[str, float] = {}  # request -> time.monotonic() of its cancel
        self._cancel_lock = threading.Lock()

    def cancel(self, request: str) -> None:
        """The client of ``request`` went away: make none of its images that can be avoided.

        Safe from any thread; cheap (the event loop calls it).
        """
        if not request:
            return
        now = time.monotonic()
        with self._cancel_lock:
            self._cancelled = {
                r: at for r, at in self._cancelled.items() if now - at < CANCEL_MEMORY_SECONDS
            }
            self._cancelled[request] = now

    def _is_cancelled(self, request: str) -> bool:
        with self._cancel_lock:
            return bool(request) and request in self._cancelled

    @property
    def native_size(self) -> tuple[int, int]:
        return self._native

    async def load(self) -> None:
        await self.run(self._load_sync)

    def _load_sync(self) -> None:
        import torch
        from diffusers import DiffusionPipeline

        if self.context.torch_threads:
            torch.set_num_threads(self.context.torch_threads)
        root = Path(self.context.model_dir)
        try:
            loader: Any = DiffusionPipeline  # untyped in diffusers
            pipeline = loader.from_pretrained(str(root), dtype=torch.float32, use_safetensors=True)
        except (OSError, ValueError) as exc:
            raise InvalidRequestError(f"not a loadable diffusers pipeline: {exc}") from exc
        pipeline.set_progress_bar_config(disable=True)
        self._pipeline = pipeline
        scale = int(getattr(pipeline, "vae_scale_factor", 8))
        sample = getattr(getattr(pipeline, "unet", None), "config", None)
        size = int(getattr(sample, "sample_size", 64)) * scale
        self._native = (size, size)
        self._multiple = scale
        self._predict_sync([ImagePrompt("warm up", seed=0, steps=1)], 0)

    async def unload(self) -> None:
        self._pipeline = None

    async def predict(self, batch: Sequence[Any]) -> Sequence[GeneratedImage | BaseException]:
        return await self.predict_with_threads(batch, 0)

    async def predict_with_threads(
        self, batch: Sequence[Any], threads: int
    ) -> Sequence[GeneratedImage | BaseException]:
        return await self.run_compute(self._predict_sync, list(batch), threads)

    def _predict_sync(self, batch: list[Any], threads: int) -> list[GeneratedImage | BaseException]:
        results: list[GeneratedImage | BaseException] = [
            InvalidRequestError("pending") for _ in batch
        ]
        groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        for i, item in enumerate(batch):
            problem = self._check(item)
            if problem is not None:
                results[i] = problem
                continue
            if self._is_cancelled(item.request):
                results[i] = _cancelled()
                continue
            width, height = self._size(item)
            key = (width, height, item.steps, float(item.guidance), item.negative_prompt)
            groups[key].append(i)
        with intra_op_threads(threads), self._lock:
            for (width, height, steps, guidance, negative), indices in groups.items():
                prompts = [batch[i] for i in indices]
                images = self._generate(prompts, width, height, steps, guidance, negative)
                for i, image in zip(indices, images, strict=True):
                    results[i] = image
        return results

    def _size(self, item: ImagePrompt) -> tuple[int, int]:
        native_w, native_h = self._native
        return (item.width or native_w, item.height or native_h)

    def _check(self, item: Any) -> InvalidRequestError | None:
        if not isinstance(item, ImagePrompt):
            return InvalidRequestError(f"expected an ImagePrompt, got {type(item).__name__}")
        if not item.prompt.strip():
            return InvalidRequestError("prompt must not be empty", param="prompt")
        if not 1 <= item.steps <= MAX_STEPS:
            return InvalidRequestError(f"steps must be between 1 and {MAX_STEPS}", param="steps")
        width, height = self._size(item)
        if width % self._multiple or height % self._multiple or width <= 0 or height <= 0:
            return InvalidRequestError(
                f"size {width}x{height}: width and height must be positive multiples of "
                f"{self._multiple} for this model",
                param="size",
            )
        return None

    def _generate(
        self,
        prompts: list[ImagePrompt],
        width: int,
        height: int,
        steps: int,
        guidance: float,
        negative: str | None,
    ) -> list[GeneratedImage | BaseException]:
        import torch
        from PIL import Image

        generators = [torch.Generator().manual_seed(p.seed) for p in prompts]
        interrupted = False

        def progress(pipe: Any, step: int, _timestep: Any, kwargs: dict[str, Any]) -> Any:
            nonlocal interrupted
            if self.on_step is not None:
                self.on_step(step + 1, steps)
            if all(self._is_cancelled(p.request) for p in prompts):
                pipe._interrupt = True  # the remaining steps are skipped
                interrupted = True
            return kwargs

        kwargs: dict[str, Any] = {}
        if negative is not None:
            kwargs["negative_prompt"] = [negative] * len(prompts)
        with torch.inference_mode():
            out = self._pipeline(
                prompt=[p.prompt for p in prompts],
                width=width,
                height=height,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=generators,
                output_type="np",
                callback_on_step_end=progress,
                **kwargs,
            )
        if interrupted:
            return [_cancelled() for _ in prompts]
        pixels = np.asarray(out.images)  # (batch, height, width, 3) float in [0, 1]
        images: list[GeneratedImage | BaseException] = []
        for prompt, rgb in zip(prompts, pixels, strict=True):
            buffer = io.BytesIO()
            as_bytes = (np.clip(rgb, 0.0, 1.0) * 255).round().astype(np.uint8)
            Image.fromarray(as_bytes).save(buffer, format="PNG")
            images.append(GeneratedImage(buffer.getvalue(), prompt.seed, width, height, steps))
        return images

    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("prompt", "BYTES", [1])]

    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec("image", "BYTES", [-1])]

    def memory_bytes(self) -> int:
        pipeline = self._pipeline
        if pipeline is None:
            return 0
        return sum(
            module_bytes(getattr(pipeline, name, None))
            for name in ("unet", "vae", "text_encoder", "text_encoder_2", "transformer")
        )


def _cancelled() -> UnavailableError:
    return UnavailableError("the request was cancelled: its client went away")
