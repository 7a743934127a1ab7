"""ModelHost: where loaded models live, as the data plane sees them.

The data plane resolves a reference to a version and then asks a host to run
items, tensors or explanations on that version; it never touches a runtime or a
batcher itself. Two hosts implement the same calls:

* ``LocalHost``: the models live in this process (a ``ModelManager`` with one
  batcher per model). Tests, jobs and ``maas serve --workers 1`` use it.
* ``serving.engine.client.RemoteHost``: the models live in the engine process
  shared by every HTTP worker of the machine, reached over local IPC, so that
  each model's weights and batcher exist once however many workers serve HTTP.

Everything that crosses this boundary is plain data (numpy arrays, dataclasses
of the runtimes, ``VersionInfo``) so that the remote host can carry it.
Generation too: ``generate`` takes a ``GenerationRequest`` and answers with an
async stream of ``Prepared`` then ``Chunk`` dataclasses (``serving.generation``).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from maas.config import Settings
from maas.errors import InvalidRequestError
from maas.registry.schemas import VersionInfo
from maas.registry.store import Registry
from maas.runtimes.base import TensorSpec
from maas.runtimes.explain import ExplainableRuntime, Explanation
from maas.runtimes.text_to_image import DiffusersTextToImageRuntime
from maas.serving.batching import RequestCost
from maas.serving.generation import GenerationEvent, GenerationRequest, Prepared
from maas.serving.manager import LoadedModel, ModelManager
from maas.serving.metrics import ServingMetrics


@dataclass(frozen=True, slots=True)
class LoadedView:
    """One loaded model as ``GET /admin/v1/loaded`` shows it."""

    ref: str
    model: str
    version: int
    task: str
    format: str
    memory_bytes: int
    pinned: bool
    active_requests: int
    queued_items: int
    loaded_at: float
    idle_seconds: float


@dataclass(frozen=True, slots=True)
class HostStatus:
    budget_bytes: int
    used_bytes: int
    models: list[LoadedView]
    # ref -> why its last load failed (on demand or desired by a deployment)
    load_failures: dict[str, str] = field(default_factory=dict)


class ModelHost(ABC):
    """The calls the data plane makes on loaded models (loading them on demand)."""

    @abstractmethod
    async def predict(self, version: VersionInfo, items: list[Any], cost: RequestCost) -> list[Any]:
        """Run the items of one request through the version's batcher; results in order."""

    @abstractmethod
    async def predict_tensors(
        self, version: VersionInfo, inputs: dict[str, np.ndarray], cost: RequestCost
    ) -> dict[str, np.ndarray]:
        """Run one request of named tensors (tensor models) through the batcher."""

    @abstractmethod
    async def labels(self, version: VersionInfo) -> list[str]:
        """A classifier's labels in output order (empty when the runtime has none)."""

    @abstractmethod
    async def signature(self, version: VersionInfo) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """The runtime's inputs and outputs (loads the model)."""

    @abstractmethod
    async def explain(
        self, version: VersionInfo, text: str, *, target: str | int | None, steps: int
    ) -> Explanation: ...

    @abstractmethod
    def generate(
        self, version: VersionInfo, request: GenerationRequest
    ) -> AsyncGenerator[GenerationEvent, None]:
        """Generate text with a text-generation version, as a stream of events.

        The first event is ``Prepared`` (the prompt's token count and the resolved
        ``max_tokens``); every refusal that comes before generation (unknown or
        unloadable model, no chat template, prompt too long, queue full) is raised
        by the first ``__anext__`` instead, so it can become a status code. Nothing
        generates until the second ``__anext__``: a caller may close the stream
        after ``Prepared`` (a refused token budget) at no cost. Then come ``Chunk``s
        of the ``n`` sequences (``Chunk.index``) until each has one with a
        ``finish_reason``; an error raised later ends the stream mid-way. Closing
        the iterator (``aclose``) cancels every sequence still running and frees
        its slot in the running batch.
        """

    @abstractmethod
    async def load(self, version: VersionInfo, *, pinned: bool = False) -> LoadedView:
        """Load now (not on the first request); ``pinned`` models are never evicted."""

    @abstractmethod
    async def unload(self, ref: str) -> bool: ...

    @abstractmethod
    async def status(self) -> HostStatus: ...

    async def cancel(self, version: VersionInfo, request: str) -> None:  # noqa: B027
        """The client of ``request`` (its prediction id) went away: stop its work where the
        runtime can (image generation, ``runtimes/text_to_image.py``). Default: nothing."""

    async def warm(self, version: VersionInfo) -> None:
        """Load the version if it is not loaded, leaving its pin as it is (a
        zero-downtime switch loads the new target before requests move to it)."""
        if not await self.is_loaded(version.ref):
            await self.load(version)

    @abstractmethod
    async def is_loaded(self, ref: str) -> bool: ...

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the host holds."""


def view(model: LoadedModel) -> LoadedView:
    return LoadedView(
        ref=model.key,
        model=model.version.model,
        version=model.version.version,
        task=model.version.task,
        format=model.version.format,
        memory_bytes=model.memory,
        pinned=model.pinned,
        active_requests=model.active,
        queued_items=model.batcher.queue_depth,
        loaded_at=model.loaded_at,
        idle_seconds=round(time.monotonic() - model.last_used, 3),
    )


class LocalHost(ModelHost):
    """Models loaded in this process by a ``ModelManager``."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    async def predict(self, version: VersionInfo, items: list[Any], cost: RequestCost) -> list[Any]:
        async with self.manager.use(version) as model:
            results: list[Any] = await model.batcher.submit_many(items, cost)
            return results

    async def predict_tensors(
        self, version: VersionInfo, inputs: dict[str, np.ndarray], cost: RequestCost
    ) -> dict[str, np.ndarray]:
        async with self.manager.use(version) as model:
            outputs: dict[str, np.ndarray] = await model.batcher.submit(inputs, cost)
            return outputs

    async def labels(self, version: VersionInfo) -> list[str]:
        async with self.manager.use(version) as model:
            return list(getattr(model.runtime, "labels", None) or [])

    async def signature(self, version: VersionInfo) -> tuple[list[TensorSpec], list[TensorSpec]]:
        model = await self.manager.get(version)
        return model.runtime.inputs(), model.runtime.outputs()

    async def explain(
        self, version: VersionInfo, text: str, *, target: str | int | None, steps: int
    ) -> Explanation:
        async with self.manager.use(version) as model:
            runtime = model.runtime
            if not isinstance(runtime, ExplainableRuntime):
                raise InvalidRequestError(
                    f"model {version.ref} (format {version.format}) is served by "
                    f"{type(runtime).__name__}, which cannot explain predictions",
                    param="model",
                )
            return await runtime.explain(text, target=target, steps=steps)

    async def generate(
        self, version: VersionInfo, request: GenerationRequest
    ) -> AsyncGenerator[GenerationEvent, None]:
        # The model stays borrowed (not evictable) until the stream ends or is closed.
        async with self.manager.use(version) as model:
            engine = model.engine
            if engine is None:
                raise InvalidRequestError(
                    f"model {version.ref} is for {version.task}, not text-generation",
                    param="model",
                )
            prompt_ids, params = await engine.prepare(request)
            assert params.max_tokens is not None  # prepare resolves it
            yield Prepared(len(prompt_ids), params.max_tokens)
            # aclosing: a caller that closes this stream closes the sequences now, not at GC.
            async with aclosing(engine.generate(prompt_ids, params, request.n)) as chunks:
                async for chunk in chunks:
                    yield chunk

    async def cancel(self, version: VersionInfo, request: str) -> None:
        # ``get``, not ``get_loaded``: a client that left while its model was still
        # loading cancels once the load is done, before its items reach the runtime.
        model = await self.manager.get(version)
        if isinstance(model.runtime, DiffusersTextToImageRuntime):
            model.runtime.cancel(request)

    async def load(self, version: VersionInfo, *, pinned: bool = False) -> LoadedView:
        model = await self.manager.get(version, pinned=pinned)
        model.pinned = pinned  # an explicit load without pin also releases an earlier pin
        return view(model)

    async def unload(self, ref: str) -> bool:
        return await self.manager.unload(ref)

    async def warm(self, version: VersionInfo) -> None:
        await self.manager.get(version)  # pins recorded for it apply (desired_pins)

    async def status(self) -> HostStatus:
        return HostStatus(
            budget_bytes=self.manager.budget,
            used_bytes=self.manager.used_bytes(),
            models=[view(m) for m in self.manager.loaded()],
            load_failures=dict(self.manager.load_failures),
        )

    async def is_loaded(self, ref: str) -> bool:
        return self.manager.get_loaded(ref) is not None

    async def close(self) -> None:
        await self.manager.close()


def create_host(registry: Registry, settings: Settings, metrics: ServingMetrics) -> ModelHost:
    """The host of this machine's models: in this process, or Ray Serve replicas (``--ray``)."""
    if settings.ray_address:
        from maas.serving.ray_host import RayHost  # imports ray only when it is called

        return RayHost(registry, settings)
    return LocalHost(ModelManager(registry, settings, metrics))
