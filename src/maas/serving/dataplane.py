"""DataPlane: the transport-agnostic entry for inference.

HTTP layers decode a request, call one method here, and encode the answer.
Resolution (``model``, ``model:3``, ``model@alias``), loading, batching and
metrics live here so the OpenAI and V2 routes stay thin.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import numpy as np

from maas.errors import InvalidRequestError, NotFoundError
from maas.registry.refs import ModelRef
from maas.registry.schemas import VersionInfo
from maas.registry.store import Registry
from maas.runtimes.base import TensorSpec
from maas.runtimes.embeddings import Embedding
from maas.serving.manager import LoadedModel, ModelManager
from maas.serving.metrics import ServingMetrics


@dataclass(frozen=True, slots=True)
class EmbedResult:
    version: VersionInfo
    vectors: list[np.ndarray]
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class InferResult:
    version: VersionInfo
    outputs: dict[str, np.ndarray]


class DataPlane:
    def __init__(self, registry: Registry, manager: ModelManager, metrics: ServingMetrics) -> None:
        self.registry = registry
        self.manager = manager
        self.metrics = metrics

    async def resolve(self, ref: str | ModelRef) -> VersionInfo:
        parsed = ModelRef.parse(ref) if isinstance(ref, str) else ref
        version = await anyio.to_thread.run_sync(self.registry.resolve, parsed)
        if version.status != "ready":
            raise NotFoundError(
                f"{version.ref} has status {version.status!r} and cannot serve requests",
                param="model",
            )
        return version

    def _expect_task(self, version: VersionInfo, task: str) -> None:
        if version.task != task:
            raise InvalidRequestError(
                f"model {version.model} is a {version.task} model, not {task}", param="model"
            )

    async def embed(
        self, ref: str, items: Sequence[str | list[int]], *, dimensions: int | None = None
    ) -> EmbedResult:
        version = await self.resolve(ref)
        self._expect_task(version, "embeddings")
        started = time.perf_counter()
        async with self.manager.use(version) as model:
            results: list[Embedding] = await model.batcher.submit_many(list(items))
        vectors = [r.vector for r in results]
        if dimensions is not None:
            vectors = self._shorten(model, vectors, dimensions)
        self.metrics.request_seconds.labels(version.model, "embeddings").observe(
            time.perf_counter() - started
        )
        return EmbedResult(version, vectors, sum(r.tokens for r in results))

    @staticmethod
    def _shorten(
        model: LoadedModel, vectors: list[np.ndarray], dimensions: int
    ) -> list[np.ndarray]:
        native = int(vectors[0].shape[0]) if vectors else 0
        if dimensions == native:
            return vectors
        if not model.version.tags.get("matryoshka"):
            raise InvalidRequestError(
                f"model {model.version.model} returns {native} dimensions and was not trained "
                "to be shortened (tag it matryoshka=true if it was)",
                param="dimensions",
            )
        if not 0 < dimensions < native:
            raise InvalidRequestError(
                f"dimensions must be between 1 and {native}", param="dimensions"
            )
        out = []
        for v in vectors:
            cut = v[:dimensions]
            out.append((cut / max(float(np.linalg.norm(cut)), 1e-12)).astype(np.float32))
        return out

    async def infer(self, ref: str, inputs: dict[str, np.ndarray]) -> InferResult:
        """Run one V2 tensor request (ONNX graphs: task ``tensor``)."""
        version = await self.resolve(ref)
        self._expect_task(version, "tensor")
        started = time.perf_counter()
        async with self.manager.use(version) as model:
            outputs: dict[str, np.ndarray] = await model.batcher.submit(inputs)
        self.metrics.request_seconds.labels(version.model, "infer").observe(
            time.perf_counter() - started
        )
        return InferResult(version, outputs)

    async def signature(self, ref: str) -> tuple[VersionInfo, list[TensorSpec], list[TensorSpec]]:
        """Inputs and outputs of a version, loading it when the registry does not know them."""
        version = await self.resolve(ref)
        meta: dict[str, Any] = version.metadata
        if "inputs" in meta and "outputs" in meta:
            return (
                version,
                [TensorSpec(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]],
                [TensorSpec(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]],
            )
        model = await self.manager.get(version)
        return version, model.runtime.inputs(), model.runtime.outputs()

    async def is_ready(self, ref: str) -> bool:
        version = await self.resolve(ref)
        return self.manager.get_loaded(version.ref) is not None
