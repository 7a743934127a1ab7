"""``/v1/chat/completions`` and ``/v1/completions``: OpenAI's wire format, streaming included.

The routes only translate: the request body becomes a ``GenerationRequest``,
``DataPlane.generate`` does the rest (resolution, PII policy, prompt encoding,
context and TPM checks, the running batch), and its chunks become a JSON
answer or server-sent events.

Everything that can fail (unknown model, no chat template, prompt too long,
unsupported fields, queue full, token rate) fails before the first byte, with a
proper status code: ``DataPlane.generate`` raises it. Once a stream has
started, a failure ends it with an error event (OpenAI's shape) instead of a
broken connection.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from maas.api.bodies import JsonBodyRoute
from maas.api.chat_requests import chat_request, sampling_params
from maas.api.chat_tools import ToolDeltas, tool_message
from maas.api.deps import CtxDep, DataPlaneDep, get_admission, require_key
from maas.api.feedback import answer_headers
from maas.api.schemas.chat import ChatCompletionRequest, CompletionRequest
from maas.errors import InvalidRequestError, MaasError
from maas.registry.refs import model_name
from maas.serving.context import RequestContext
from maas.serving.dataplane import DataPlane, Generation
from maas.serving.generation import (
    Chunk,
    GenerationRequest,
    TokenLogprob,
)

log = logging.getLogger("maas.api")

router = APIRouter(
    prefix="/v1",
    tags=["openai"],
    dependencies=[Depends(require_key)],
    route_class=JsonBodyRoute,
)


def _refuse_unsupported(found: dict[str, Any]) -> None:
    if found:
        name, why = next(iter(found.items()))
        raise InvalidRequestError(f"{name} {why}", param=name)


async def _start(
    request: Request,
    ctx: RequestContext,
    dataplane: DataPlane,
    route: str,
    model: str,
    generation: GenerationRequest,
) -> Generation:
    """Everything that may fail with a status code, before any byte is sent."""
    ctx.ensure_model(model_name(model))
    # The key's TPM window must have room for the most this request may use.
    check_tokens = functools.partial(get_admission(request).check_tokens, ctx.admitted)
    return await dataplane.generate(ctx, model, generation, route=route, check_tokens=check_tokens)


@dataclass(slots=True)
class _Completion:
    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str = "stop"
    tokens: int = 0
    cached: int = 0  # prompt tokens it reused from the prefix cache


async def _complete_all(generation: Generation, n: int) -> list[_Completion]:
    """The ``n`` whole completions (generated side by side)."""
    results = [_Completion() for _ in range(n)]
    async with generation:
        async for chunk in generation:
            result = results[chunk.index]
            result.text.append(chunk.text)
            result.logprobs.extend(chunk.logprobs)
            result.tokens = chunk.completion_tokens
            if chunk.finish_reason is not None:
                result.finish_reason = chunk.finish_reason
                result.cached = chunk.cached_tokens
    return results


def _usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    """OpenAI's usage object; the prompt, counted once, is the first sequence's."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def _logprob_content(
    entries: tuple[TokenLogprob, ...] | list[TokenLogprob],
) -> list[dict[str, Any]]:
    return [
        {
            "token": e.token,
            "logprob": e.logprob,
            "bytes": list(e.token.encode()),
            "top_logprobs": [
                {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in e.top
            ],
        }
        for e in entries
    ]


def _legacy_logprobs(entries: tuple[TokenLogprob, ...] | list[TokenLogprob]) -> dict[str, Any]:
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [dict(e.top) for e in entries],
    }


# Characters JSON keeps raw inside strings that line-based readers take for line breaks
# (Python's str.splitlines, httpx's iter_lines): NEL, LINE and PARAGRAPH SEPARATOR. A model
# emits them now and then; raw, such a reader split the event's JSON in two, and its stream
# ended there with no [DONE] (a drain test with a tiny random model hit it). Escaped, every
# event is one line for any SSE reader.
_LINE_BREAKS = (("\x85", "\\u0085"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    for raw, escaped in _LINE_BREAKS:
        data = data.replace(raw, escaped)
    return f"data: {data}\n\n".encode()


# ------------------------------------------------------------------------ chat


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    request: Request,
    response: Response,
    body: ChatCompletionRequest,
    ctx: CtxDep,
    dataplane: DataPlaneDep,
) -> dict[str, Any] | StreamingResponse:
    _refuse_unsupported(body.unsupported())
    wanted = chat_request(body)
    generation = await _start(request, ctx, dataplane, "chat", body.model, wanted)
    ident = ctx.prediction_id  # chatcmpl-<24 hex>, made by the data plane
    response.headers.update(answer_headers(ctx))
    created = int(time.time())
    fingerprint = f"maas-{generation.version.ref}"
    # Functions the model may call: its output is read for calls.
    names = [t.name for t in wanted.tools] if wanted.calls_tools else None
    if not body.stream:
        results = await _complete_all(generation, body.n)
        answers = [
            tool_message("".join(r.text), r.finish_reason, names)
            if names is not None
            else ({"role": "assistant", "content": "".join(r.text)}, r.finish_reason)
            for r in results
        ]
        return {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": generation.version.ref,
            "system_fingerprint": fingerprint,
            "choices": [
                {
                    "index": index,
                    "message": message,
                    "logprobs": (
                        {"content": _logprob_content(result.logprobs)} if body.logprobs else None
                    ),
                    "finish_reason": finish_reason,
                }
                for index, (result, (message, finish_reason)) in enumerate(
                    zip(results, answers, strict=True)
                )
            ],
            "usage": _usage(
                generation.prompt_tokens, sum(r.tokens for r in results), results[0].cached
            ),
        }

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(
        index: int, delta: dict[str, Any], finish: str | None, logprobs: Any = None
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": generation.version.ref,
            "system_fingerprint": fingerprint,
            "choices": [
                {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            ],
        }
        if include_usage:
            payload["usage"] = None
        return payload

    deltas = ToolDeltas(names) if names is not None else None

    def piece(c: Chunk) -> dict[str, Any] | None:
        logprobs = (
            {"content": _logprob_content(c.logprobs)} if body.logprobs and c.logprobs else None
        )
        if deltas is None:
            delta: dict[str, Any] = {"content": c.text} if c.text else {}
            finish = c.finish_reason
        else:
            delta, finish = deltas.delta(c.index, c.text, c.finish_reason)
            if not delta and finish is None and logprobs is None:
                return None  # all held back: it may be the start of a call
        return chunk(c.index, delta, finish, logprobs)

    return _streaming_response(
        generation,
        headers=answer_headers(ctx),
        first=[chunk(i, {"role": "assistant", "content": ""}, None) for i in range(body.n)],
        piece=piece,
        final=_final_usage(
            include_usage,
            ident,
            "chat.completion.chunk",
            created,
            generation.version.ref,
            fingerprint,
        ),
    )


# ----------------------------------------------------------------- completions


@router.post("/completions", response_model=None)
async def completions(
    request: Request,
    response: Response,
    body: CompletionRequest,
    ctx: CtxDep,
    dataplane: DataPlaneDep,
) -> dict[str, Any] | StreamingResponse:
    _refuse_unsupported(body.unsupported())
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    top = body.logprobs
    generation = await _start(
        request,
        ctx,
        dataplane,
        "completions",
        body.model,
        GenerationRequest(
            prompt=prompt, params=sampling_params(body, body.max_tokens, top), n=body.n
        ),
    )
    ident = ctx.prediction_id  # cmpl-<24 hex>, made by the data plane
    response.headers.update(answer_headers(ctx))
    created = int(time.time())
    fingerprint = f"maas-{generation.version.ref}"
    if not body.stream:
        results = await _complete_all(generation, body.n)
        return {
            "id": ident,
            "object": "text_completion",
            "created": created,
            "model": generation.version.ref,
            "system_fingerprint": fingerprint,
            "choices": [
                {
                    "index": index,
                    "text": "".join(result.text),
                    "logprobs": _legacy_logprobs(result.logprobs) if top is not None else None,
                    "finish_reason": result.finish_reason,
                }
                for index, result in enumerate(results)
            ],
            "usage": _usage(
                generation.prompt_tokens, sum(r.tokens for r in results), results[0].cached
            ),
        }

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def piece(c: Chunk) -> dict[str, Any] | None:
        payload: dict[str, Any] = {
            "id": ident,
            "object": "text_completion",
            "created": created,
            "model": generation.version.ref,
            "system_fingerprint": fingerprint,
            "choices": [
                {
                    "index": c.index,
                    "text": c.text,
                    "logprobs": _legacy_logprobs(c.logprobs)
                    if top is not None and c.logprobs
                    else None,
                    "finish_reason": c.finish_reason,
                }
            ],
        }
        if include_usage:
            payload["usage"] = None
        return payload

    return _streaming_response(
        generation,
        headers=answer_headers(ctx),
        first=[],
        piece=piece,
        final=_final_usage(
            include_usage,
            ident,
            "text_completion",
            created,
            generation.version.ref,
            fingerprint,
        ),
    )


# ------------------------------------------------------------------- streaming


def _final_usage(
    include: bool, ident: str, object_name: str, created: int, model: str, fingerprint: str
) -> Callable[[int, int, int], dict[str, Any]] | None:
    """The last event of ``stream_options.include_usage``: no choices, the token counts."""
    if not include:
        return None

    def final(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
        return {
            "id": ident,
            "object": object_name,
            "created": created,
            "model": model,
            "system_fingerprint": fingerprint,
            "choices": [],
            "usage": _usage(prompt_tokens, completion_tokens, cached_tokens),
        }

    return final


def _streaming_response(
    generation: Generation,
    *,
    headers: dict[str, str],
    first: list[dict[str, Any]],
    piece: Callable[[Chunk], dict[str, Any] | None],
    final: Callable[[int, int, int], dict[str, Any]] | None,
) -> StreamingResponse:
    async def events() -> AsyncIterator[bytes]:
        tokens: dict[int, int] = {}
        cached = 0
        try:
            for opening in first:
                yield _sse(opening)
            try:
                async for c in generation:
                    tokens[c.index] = c.completion_tokens
                    if c.index == 0 and c.finish_reason is not None:
                        cached = c.cached_tokens
                    payload = piece(c)
                    if payload is not None:  # None: nothing to send for this chunk yet
                        yield _sse(payload)
            except Exception as exc:  # the stream has started: report it in-band
                if isinstance(exc, MaasError):
                    message = exc.message
                else:
                    log.exception("generation failed mid-stream")
                    message = "generation failed"
                error = {
                    "message": message,
                    "type": "server_error",
                    "param": None,
                    "code": "generation_failed",
                }
                yield _sse({"error": error})
            if final is not None:
                yield _sse(final(generation.prompt_tokens, sum(tokens.values()), cached))
            yield _sse("[DONE]")
        finally:
            # A client that disconnected lands here too: stop its sequences now.
            await generation.aclose()

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers},
    )
