"""DataPlane: the transport-agnostic entry for inference.

HTTP layers decode a request, call one method here, and encode the answer.
Resolution (``model``, ``model:3``, ``model@alias``), loading, batching and
metrics live here so the OpenAI and V2 routes stay thin.

Tensor inference (``infer``) speaks in named numpy arrays, the shape of the
Open Inference Protocol. ONNX graphs take them as they are; the task runtimes
(embeddings, text and image classification) are adapted here: one BYTES input
of N elements becomes N batcher items, and their results are stacked back into
named output tensors.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Sequence
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import numpy as np

from maas.errors import InvalidRequestError, MaasError, NotFoundError, UnavailableError
from maas.registry.formats import DATASET_TASK
from maas.registry.refs import ModelRef, model_name
from maas.registry.schemas import VersionInfo
from maas.registry.store import Registry
from maas.runtimes.base import TensorSpec
from maas.runtimes.embeddings import Embedding
from maas.security.pii import PiiPolicy, apply_input, apply_output, strictest
from maas.serving.context import RequestContext
from maas.serving.feedback import RECORDED_TASKS, PredictionRecorder, new_prediction_id
from maas.serving.generation import Chunk, GenerationRequest, Prepared
from maas.serving.hosts import ModelHost
from maas.serving.metrics import ServingMetrics
from maas.serving.monitoring import DriftMonitor
from maas.serving.resolver import Resolver
from maas.serving.traffic import Traffic

# Task -> the name of its single input tensor on the V2 surface.
_TEXT_INPUT = {"embeddings": "text", "text-classification": "text"}
_IMAGE_INPUT = {"image-classification": "image"}


@dataclass(frozen=True, slots=True)
class EmbedResult:
    version: VersionInfo
    vectors: list[np.ndarray]
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class InferResult:
    version: VersionInfo
    outputs: dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class _Accepted:
    version: VersionInfo
    prepared: Prepared


class Generation:
    """A generation the model accepted: its version and prompt size, then its chunks.

    Iterate it for ``Chunk``s (``Chunk.index`` tells the ``n`` sequences apart;
    each ends with a chunk that has a ``finish_reason``). An error raised while
    iterating ends it mid-way. Close it (``aclose`` or ``async with``) when
    stopping early: that cancels the sequences still running and frees their
    slots in the batch.
    """

    def __init__(
        self,
        version: VersionInfo,
        prepared: Prepared,
        chunks: AsyncGenerator[_Accepted | Chunk, None],
    ) -> None:
        self.version = version
        self.prompt_tokens = prepared.prompt_tokens
        self.max_tokens = prepared.max_tokens  # per sequence
        self._chunks = chunks

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> Chunk:
        chunk = await anext(self._chunks)
        if not isinstance(chunk, Chunk):
            raise TypeError("a generation accepts once")
        return chunk

    async def aclose(self) -> None:
        await self._chunks.aclose()

    async def __aenter__(self) -> Generation:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class DataPlane:
    # Composed in by ``compose`` (the app does; tests and jobs may leave them out).
    monitor: DriftMonitor | None = None
    predictions: PredictionRecorder | None = None

    def __init__(
        self,
        registry: Registry,
        host: ModelHost,
        metrics: ServingMetrics,
        *,
        warm_timeout: float = 60.0,
    ) -> None:
        self.registry = registry
        self.host = host
        self.metrics = metrics
        self._resolver = Resolver(registry, host, warm_timeout=warm_timeout)
        # Routing policies and shadow mirrors: answers counted, compared, observed.
        self.traffic = Traffic(
            registry, host, metrics, resolve=self.resolve, observe=self._observe_shadow
        )

    # ----------------------------------------------------------------- plumbing

    def compose(
        self, *, monitor: DriftMonitor | None = None, predictions: PredictionRecorder | None = None
    ) -> None:
        """Add drift monitoring and prediction recording: the data plane hands them each
        answered request's items and results (serving/monitoring.py, serving/feedback.py)."""
        self.monitor = monitor
        self.predictions = predictions

    @contextmanager
    def track(self, ctx: RequestContext, route: str, ref: str) -> Iterator[RequestContext]:
        """Count one request by model, version, route and outcome, and time it."""
        record = ctx
        record.model = model_name(ref)
        record.route = route
        record.prediction_id = new_prediction_id(route)
        started = time.perf_counter()
        try:
            yield record
        except MaasError as exc:
            record.status = exc.code
            raise
        except asyncio.CancelledError:  # the caller went away (a closed connection)
            record.status = "cancelled"
            raise
        except BaseException:
            record.status = "internal_error"
            raise
        finally:
            labels = (record.model, record.version, route, record.status)
            self.metrics.requests.labels(*labels).inc()
            if record.status == "ok":
                self.metrics.request_seconds.labels(record.model, route).observe(
                    time.perf_counter() - started
                )

    async def resolve(self, ref: str | ModelRef) -> VersionInfo:
        """The version a reference names, from a cache (``serving.resolver``: no
        database query on the request path; an alias that moved keeps its loaded
        version until the new one is loaded here)."""
        parsed = ModelRef.parse(ref) if isinstance(ref, str) else ref
        version = await self._resolver.resolve(parsed)
        if version.task == DATASET_TASK:
            raise NotFoundError(f"{version.model!r} is a dataset, not a model", param="model")
        if version.status != "ready":
            raise NotFoundError(
                f"{version.ref} has status {version.status!r} and cannot serve requests",
                param="model",
            )
        return version

    def forget_resolved(self) -> None:
        """Drop every cached resolution and routing policy (the registry changed); safe
        from any thread. Called on the "registry" change epoch (registry/epochs.py)."""
        self._resolver.forget()
        self.traffic.forget()

    async def close(self) -> None:
        await self.traffic.close()
        await self._resolver.close()

    async def serving_version(
        self, ctx: RequestContext, ref: str
    ) -> tuple[VersionInfo, VersionInfo | None]:
        """The version that answers ``ref`` for this request, and the shadow it is mirrored
        to (``serving.traffic``)."""
        return await self.traffic.place(ctx, ref)

    def _observe_shadow(
        self, version: VersionInfo, items: Sequence[Any], results: Sequence[Any]
    ) -> None:
        if self.monitor is not None and version.task != "tensor":  # as for served answers
            self.monitor.observe(version, list(items), list(results))

    def _expect_task(self, version: VersionInfo, task: str) -> None:
        if version.task != task:
            raise InvalidRequestError(
                f"model {version.model} is for {version.task}, not {task}", param="model"
            )

    # --------------------------------------------------------------- embeddings

    @staticmethod
    def pii_policy(version: VersionInfo, caller: PiiPolicy | None) -> PiiPolicy:
        """The caller's (key's) policy combined with the model's ``pii_policy`` tag: strictest."""
        tagged = version.tags.get("pii_policy")
        return strictest(caller, PiiPolicy.parse(str(tagged)) if tagged else None)

    async def screen(
        self, version: VersionInfo, texts: list[str], policy: PiiPolicy | None
    ) -> list[str]:
        """Apply the PII policy of the caller and of the model to request texts.

        Long inputs are scanned on a worker thread: the regexes are cheap per
        sentence but a 2048-item request should not hold the event loop.
        """
        effective = self.pii_policy(version, policy)
        if not effective.applies_to_input:
            return texts
        if sum(len(t) for t in texts) < 4096:
            return [apply_input(effective, t) for t in texts]
        return await anyio.to_thread.run_sync(lambda: [apply_input(effective, t) for t in texts])

    async def embed(
        self,
        ctx: RequestContext,
        ref: str,
        items: Sequence[str | list[int]],
        *,
        dimensions: int | None = None,
    ) -> EmbedResult:
        pii = ctx.pii
        with self.track(ctx, "embeddings", ref) as tracking:
            version, shadow = await self.serving_version(tracking, ref)
            tracking.version = str(version.version)
            self._expect_task(version, "embeddings")
            texts = [item for item in items if isinstance(item, str)]
            if texts:
                screened = iter(await self.screen(version, texts, pii))
                items = [next(screened) if isinstance(i, str) else i for i in items]
            tracking.items = len(items)
            results: list[Embedding] = await self.host.predict(version, list(items), tracking.cost)
            if self.monitor is not None:
                self.monitor.observe(version, items, results)
            self.traffic.mirror(shadow, version, items, results)
            vectors = [r.vector for r in results]
            if dimensions is not None:
                vectors = self._shorten(version, vectors, dimensions)
            tracking.prompt_tokens = sum(r.tokens for r in results)
            return EmbedResult(version, vectors, tracking.prompt_tokens)

    @staticmethod
    def _shorten(
        version: VersionInfo, vectors: list[np.ndarray], dimensions: int
    ) -> list[np.ndarray]:
        native = int(vectors[0].shape[0]) if vectors else 0
        if dimensions == native:
            return vectors
        if not version.tags.get("matryoshka"):
            raise InvalidRequestError(
                f"model {version.model} returns {native} dimensions and was not trained "
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

    # ------------------------------------------------------------------ tensors

    async def infer(
        self,
        ctx: RequestContext,
        ref: str,
        inputs: dict[str, np.ndarray],
        *,
        route: str = "infer",
    ) -> InferResult:
        """Run one request of named tensors through any servable model."""
        pii = ctx.pii
        with self.track(ctx, route, ref) as tracking:
            version, shadow = await self.serving_version(tracking, ref)
            tracking.version = str(version.version)
            if version.task == "tensor":
                tracking.items = 1
                outputs = await self.host.predict_tensors(version, inputs, tracking.cost)
                if self.monitor is not None:
                    self.monitor.observe_tensors(version, inputs, outputs)
                self.traffic.mirror_tensors(shadow, version, inputs, outputs)
            elif version.task in _TEXT_INPUT:
                texts = [
                    _utf8(item, _TEXT_INPUT[version.task], i)
                    for i, item in enumerate(_bytes_items(inputs, _TEXT_INPUT[version.task]))
                ]
                texts = await self.screen(version, texts, pii)
                outputs = await self._run_items(version, texts, tracking, shadow)
            elif version.task in _IMAGE_INPUT:
                images = _bytes_items(inputs, _IMAGE_INPUT[version.task])
                outputs = await self._run_items(version, images, tracking, shadow)
            else:
                raise _no_tensor_interface(version)
            return InferResult(version, outputs)

    async def _run_items(
        self,
        version: VersionInfo,
        items: list[Any],
        tracking: RequestContext,
        shadow: VersionInfo | None = None,
    ) -> dict[str, np.ndarray]:
        tracking.items = len(items)
        results = await self.host.predict(version, items, tracking.cost)
        self.traffic.mirror(shadow, version, items, results)
        tracking.prompt_tokens = sum(getattr(r, "tokens", 0) for r in results)
        if self.monitor is not None:
            self.monitor.observe(version, items, results)
        if self.predictions is not None and version.task in RECORDED_TASKS:
            self.predictions.record_classifications(
                tracking.prediction_id,
                version,
                items,
                results,
                key_id=_key_id(tracking),
                pii=tracking.pii,
            )
        if version.task == "embeddings":
            return {"embedding": np.stack([r.vector for r in results]).astype(np.float32)}
        # Classification: the top label, and every label's probability in label order.
        order = await self.host.labels(version)
        if not order and results:
            order = sorted(label for label, _ in results[0].labels)
        rows = []
        for result in results:
            scores = dict(result.labels)
            rows.append([scores.get(label, 0.0) for label in order])
        return {
            "label": np.array([r.labels[0][0].encode() for r in results], dtype=np.object_),
            "probabilities": np.array(rows, dtype=np.float32).reshape(len(results), len(order)),
        }

    # --------------------------------------------------------------- generation

    async def generate(
        self,
        ctx: RequestContext,
        ref: str,
        request: GenerationRequest,
        *,
        route: str = "generate",
        check_tokens: Callable[[int], Awaitable[None]] | None = None,
    ) -> Generation:
        """Start generating text; the answer streams from the returned ``Generation``.

        Everything that refuses the request raises here, before the caller has
        sent a byte: resolution, a model of another task, input PII (screened or
        blocked by the caller's and the model's policy), no chat template, a prompt
        past the context, a full queue, and ``check_tokens``, which is awaited with
        the most tokens the request may use (prompt + ``n`` x ``max_tokens``) and
        raises to refuse it (the transport's TPM window). Then the chunks come out
        as the caller may see them: with an output PII policy each sequence's text
        is held to its end and comes out as one chunk, redacted (or the stream
        fails, blocked), and without logprobs, whose tokens would show what was
        redacted. ``ctx`` gets the version, items (``n``), prompt tokens, and the
        completion tokens as they are produced.
        """
        stream = self._generation(ctx, ref, request, route, check_tokens)
        accepted = await anext(stream)  # raising ends the stream: nothing to close
        if not isinstance(accepted, _Accepted):
            await stream.aclose()
            raise TypeError("a generation must start with its acceptance")
        return Generation(accepted.version, accepted.prepared, stream)

    async def _generation(
        self,
        ctx: RequestContext,
        ref: str,
        request: GenerationRequest,
        route: str,
        check_tokens: Callable[[int], Awaitable[None]] | None,
    ) -> AsyncGenerator[_Accepted | Chunk, None]:
        """One ``_Accepted`` (once every check passed), then the chunks to release."""
        with self.track(ctx, route, ref) as tracking:
            version, _ = await self.serving_version(tracking, ref)  # generation is not mirrored
            tracking.version = str(version.version)
            self._expect_task(version, "text-generation")
            texts = request.texts()
            screened = await self.screen(version, texts, ctx.pii)
            if screened != texts:
                request = request.with_texts(screened)
            policy = self.pii_policy(version, ctx.pii)
            async with aclosing(self.host.generate(version, request)) as events:
                prepared = await anext(events)
                if not isinstance(prepared, Prepared):
                    raise UnavailableError("the model host broke the generation protocol")
                if check_tokens is not None:
                    await check_tokens(prepared.prompt_tokens + prepared.max_tokens * request.n)
                # Only now: a request refused above has used no tokens.
                tracking.prompt_tokens = prepared.prompt_tokens
                tracking.items = request.n
                if self.predictions is not None:
                    self.predictions.record_generation(
                        tracking.prediction_id,
                        version,
                        "\n".join(screened),
                        request.n,
                        key_id=_key_id(tracking),
                        pii=tracking.pii,
                    )
                yield _Accepted(version, prepared)
                produced: dict[int, int] = {}
                held: dict[int, list[str]] = {}
                async for chunk in events:
                    if not isinstance(chunk, Chunk):
                        raise UnavailableError("the model host broke the generation protocol")
                    produced[chunk.index] = chunk.completion_tokens
                    tracking.completion_tokens = sum(produced.values())
                    if policy.applies_to_output:
                        held.setdefault(chunk.index, []).append(chunk.text)
                        if chunk.finish_reason is None:
                            continue
                        text = await _apply_output(policy, "".join(held.pop(chunk.index)))
                        chunk = Chunk(
                            text, chunk.finish_reason, chunk.completion_tokens, (), chunk.index
                        )
                    yield chunk

    async def signature(self, ref: str) -> tuple[VersionInfo, list[TensorSpec], list[TensorSpec]]:
        """What ``infer`` takes and returns for a version (loading it unless it is a graph).

        Only a ``tensor`` model's stored signature is its request's: task models
        take text or images (versions pushed before ``metadata_for_task`` may
        still hold their graph's tensors, which requests never send).
        """
        version = await self.resolve(ref)
        if version.task != "tensor" and version.task not in _TEXT_INPUT | _IMAGE_INPUT:
            raise _no_tensor_interface(version)
        meta: dict[str, Any] = version.metadata
        if version.task == "tensor" and "inputs" in meta and "outputs" in meta:
            return (
                version,
                [TensorSpec(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]],
                [TensorSpec(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]],
            )
        inputs, outputs = await self.host.signature(version)
        return version, inputs, outputs


def _key_id(ctx: RequestContext) -> int | None:
    key = ctx.admitted.key
    return key.id if key is not None else None


def _no_tensor_interface(version: VersionInfo) -> InvalidRequestError:
    hint = (
        ": use /v1/completions or /v1/chat/completions" if version.task == "text-generation" else ""
    )
    return InvalidRequestError(
        f"model {version.model} ({version.task}) has no tensor interface{hint}", param="model"
    )


async def _apply_output(policy: PiiPolicy, text: str) -> str:
    """The model's text as the caller may see it (long texts scanned on a worker thread)."""
    if len(text) < 4096:
        return apply_output(policy, text)
    return await anyio.to_thread.run_sync(apply_output, policy, text)


def _bytes_items(inputs: dict[str, np.ndarray], name: str) -> list[bytes]:
    """The elements of the one BYTES input a task model takes, as a flat list."""
    if set(inputs) != {name}:
        given = ", ".join(repr(n) for n in inputs) or "none"
        raise InvalidRequestError(f"expected exactly one input tensor {name!r}, got {given}")
    array = inputs[name]
    if array.dtype != np.object_:
        raise InvalidRequestError(f"input {name!r}: expected datatype BYTES")
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]  # Triton-style [batch, 1] strings
    if array.ndim != 1 or array.shape[0] == 0:
        raise InvalidRequestError(
            f"input {name!r}: expected shape [N] or [N, 1] with N >= 1, got {list(array.shape)}"
        )
    return [bytes(item) for item in array.tolist()]


def _utf8(raw: bytes, name: str, index: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(f"input {name!r}: element {index} is not UTF-8 text") from exc
    if not text:
        raise InvalidRequestError(f"input {name!r}: element {index} is empty")
    return text
