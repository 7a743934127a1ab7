"""``/v1/chat/completions`` and ``/v1/completions``: OpenAI's wire format, streaming included.

Everything that can fail (unknown model, no chat template, prompt too long,
unsupported fields, queue full) fails before the first byte, with a proper
status code. Once a stream has started, a failure ends it with an error
event (OpenAI's shape) instead of a broken connection.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from maas.api.deps import CtxDep, get_admission, require_key
from maas.api.openai import get_dataplane
from maas.api.schemas.chat import ChatCompletionRequest, CompletionRequest
from maas.errors import InvalidRequestError, MaasError
from maas.registry.refs import model_name
from maas.security.pii import PiiPolicy, apply_output
from maas.serving.context import RequestContext
from maas.serving.dataplane import DataPlane, GenerationSession
from maas.serving.generation import Chunk, SamplingParams, TokenLogprob

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(require_key)])

DataPlaneDep = Annotated[DataPlane, Depends(get_dataplane)]
DEFAULT_MAX_TOKENS = 512


def _refuse_unsupported(found: dict[str, Any]) -> None:
    if found:
        name, why = next(iter(found.items()))
        raise InvalidRequestError(f"{name} {why}", param=name)


def _params(
    body: ChatCompletionRequest | CompletionRequest,
    max_tokens: int | None,
    prompt_tokens: int,
    context: int,
    top_logprobs: int | None,
) -> SamplingParams:
    room = max(1, context - prompt_tokens)
    return SamplingParams(
        max_tokens=max_tokens if max_tokens is not None else min(DEFAULT_MAX_TOKENS, room),
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        stop=body.stop_list(),
        top_logprobs=top_logprobs,
    )


def _output_policy(ctx: RequestContext, session: GenerationSession) -> PiiPolicy:
    return DataPlane.pii_policy(session.version, ctx.pii)


async def _run(
    session: GenerationSession, prompt_ids: list[int], params: SamplingParams
) -> dict[str, Any]:
    text: list[str] = []
    logprobs: list[TokenLogprob] = []
    finish = "stop"
    tokens = 0
    async for chunk in session.engine.stream(prompt_ids, params):
        text.append(chunk.text)
        logprobs.extend(chunk.logprobs)
        tokens = chunk.completion_tokens
        if chunk.finish_reason is not None:
            finish = chunk.finish_reason
    return {"text": "".join(text), "finish_reason": finish, "tokens": tokens, "logprobs": logprobs}


async def _complete_all(
    stack: AsyncExitStack,
    session: GenerationSession,
    prompt_ids: list[int],
    params: SamplingParams,
    n: int,
) -> tuple[list[dict[str, Any]], int]:
    """``n`` completions generated concurrently; releases the model when done."""
    async with stack:
        results = await asyncio.gather(*(_run(session, prompt_ids, params) for _ in range(n)))
        completion = sum(r["tokens"] for r in results)
        session.record.completion_tokens = completion
    return list(results), completion


def _logprob_content(entries: list[TokenLogprob]) -> list[dict[str, Any]]:
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


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


async def _prepare(
    request: Request,
    ctx: RequestContext,
    dataplane: DataPlane,
    route: str,
    model: str,
    encode: Any,
    max_tokens: int | None,
    top_logprobs: int | None,
    body: ChatCompletionRequest | CompletionRequest,
) -> tuple[AsyncExitStack, GenerationSession, list[int], SamplingParams]:
    """Everything that may fail with a status code, before any byte is sent."""
    ctx.ensure_model(model_name(model))
    stack = AsyncExitStack()
    try:
        session = await stack.enter_async_context(dataplane.generation(ctx, model, route))
        prompt_ids: list[int] = await encode(session)
        params = _params(
            body, max_tokens, len(prompt_ids), session.runtime.context_length, top_logprobs
        )
        session.engine.check_context(len(prompt_ids), params.max_tokens)
        # Pre-check the TPM window for what this request may use (prompt + max_tokens).
        needed = len(prompt_ids) + params.max_tokens * body.n
        await get_admission(request).check_tokens(ctx.admitted, needed)
        session.record.prompt_tokens = len(prompt_ids)
        session.record.items = body.n
    except BaseException:
        await stack.aclose()
        raise
    return stack, session, prompt_ids, params


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    request: Request, body: ChatCompletionRequest, ctx: CtxDep, dataplane: DataPlaneDep
) -> dict[str, Any] | StreamingResponse:
    _refuse_unsupported(body.unsupported())
    max_tokens = body.max_completion_tokens or body.max_tokens
    top = (body.top_logprobs or 0) if body.logprobs else None

    async def encode(session: GenerationSession) -> list[int]:
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        texts = await dataplane.screen(session.version, [m["content"] for m in messages], ctx.pii)
        for message, text in zip(messages, texts, strict=True):
            message["content"] = text
        ids: list[int] = session.runtime.encode_chat(messages)
        return ids

    stack, session, prompt_ids, params = await _prepare(
        request, ctx, dataplane, "chat", body.model, encode, max_tokens, top, body
    )
    ident = f"chatcmpl-{secrets.token_hex(12)}"
    created = int(time.time())
    output_policy = _output_policy(ctx, session)
    if not body.stream:
        results, completion = await _complete_all(stack, session, prompt_ids, params, body.n)
        choices = []
        for index, result in enumerate(results):
            choices.append(
                {
                    "index": index,
                    "message": {
                        "role": "assistant",
                        "content": apply_output(output_policy, result["text"]),
                    },
                    "logprobs": (
                        {"content": _logprob_content(result["logprobs"])} if body.logprobs else None
                    ),
                    "finish_reason": result["finish_reason"],
                }
            )
        return {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "system_fingerprint": f"maas-{session.version.ref}",
            "choices": choices,
            "usage": _usage(len(prompt_ids), completion),
        }

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(
        index: int, delta: dict[str, Any], finish: str | None, logprobs: Any = None
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.model,
            "system_fingerprint": f"maas-{session.version.ref}",
            "choices": [
                {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            ],
        }
        if include_usage:
            payload["usage"] = None
        return payload

    def piece(index: int, c: Chunk) -> dict[str, Any]:
        logprobs = (
            {"content": _logprob_content(c.logprobs)} if body.logprobs and c.logprobs else None
        )
        delta = {"content": c.text} if c.text else {}
        return chunk(index, delta, c.finish_reason, logprobs)

    first = [chunk(i, {"role": "assistant", "content": ""}, None) for i in range(body.n)]
    return _streaming_response(
        stack,
        session,
        prompt_ids,
        params,
        body.n,
        first,
        piece,
        include_usage,
        ident,
        created,
        body.model,
        "chat.completion.chunk",
        output_policy,
    )


@router.post("/completions", response_model=None)
async def completions(
    request: Request, body: CompletionRequest, ctx: CtxDep, dataplane: DataPlaneDep
) -> dict[str, Any] | StreamingResponse:
    _refuse_unsupported(body.unsupported())
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    top = body.logprobs

    async def encode(session: GenerationSession) -> list[int]:
        (text,) = await dataplane.screen(session.version, [prompt], ctx.pii)
        ids: list[int] = session.runtime.encode_text(text)
        if not ids:
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        return ids

    stack, session, prompt_ids, params = await _prepare(
        request, ctx, dataplane, "completions", body.model, encode, body.max_tokens, top, body
    )
    ident = f"cmpl-{secrets.token_hex(12)}"
    created = int(time.time())
    output_policy = _output_policy(ctx, session)

    def legacy_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
        return {
            "tokens": [e.token for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [dict(e.top) for e in entries],
        }

    if not body.stream:
        results, completion = await _complete_all(stack, session, prompt_ids, params, body.n)
        return {
            "id": ident,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "system_fingerprint": f"maas-{session.version.ref}",
            "choices": [
                {
                    "index": i,
                    "text": apply_output(output_policy, r["text"]),
                    "logprobs": legacy_logprobs(r["logprobs"]) if top is not None else None,
                    "finish_reason": r["finish_reason"],
                }
                for i, r in enumerate(results)
            ],
            "usage": _usage(len(prompt_ids), completion),
        }

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def piece(index: int, c: Chunk) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": ident,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "system_fingerprint": f"maas-{session.version.ref}",
            "choices": [
                {
                    "index": index,
                    "text": c.text,
                    "logprobs": legacy_logprobs(c.logprobs)
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
        stack,
        session,
        prompt_ids,
        params,
        body.n,
        [],
        piece,
        include_usage,
        ident,
        created,
        body.model,
        "text_completion",
        output_policy,
    )


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _streaming_response(
    stack: AsyncExitStack,
    session: GenerationSession,
    prompt_ids: list[int],
    params: SamplingParams,
    n: int,
    first: list[dict[str, Any]],
    piece: Any,
    include_usage: bool,
    ident: str,
    created: int,
    model: str,
    object_name: str,
    output_policy: PiiPolicy,
) -> StreamingResponse:
    buffered = output_policy.applies_to_output  # redaction needs whole texts: send at the end

    async def events() -> AsyncIterator[bytes]:
        queue: asyncio.Queue[tuple[int, Chunk] | BaseException | None] = asyncio.Queue()
        tokens = [0] * n

        async def pump(index: int) -> None:
            try:
                async for c in session.engine.stream(prompt_ids, params):
                    await queue.put((index, c))
            except BaseException as exc:
                await queue.put(exc)
                raise
            finally:
                await queue.put(None)

        async with stack:
            tasks = [asyncio.create_task(pump(i)) for i in range(n)]
            try:
                for payload in first:
                    yield _sse(payload)
                open_streams = n
                held: dict[int, list[Chunk]] = {i: [] for i in range(n)}
                while open_streams:
                    item = await queue.get()
                    if item is None:
                        open_streams -= 1
                        continue
                    if isinstance(item, BaseException):
                        message = (
                            item.message if isinstance(item, MaasError) else "generation failed"
                        )
                        yield _sse(
                            {
                                "error": {
                                    "message": message,
                                    "type": "server_error",
                                    "param": None,
                                    "code": "generation_failed",
                                }
                            }
                        )
                        break
                    index, c = item
                    tokens[index] = c.completion_tokens
                    session.record.completion_tokens = sum(tokens)
                    if buffered:
                        held[index].append(c)
                        if c.finish_reason is None:
                            continue
                        text = apply_output(output_policy, "".join(h.text for h in held[index]))
                        c = Chunk(text, c.finish_reason, c.completion_tokens, [])
                    yield _sse(piece(index, c))
                if include_usage:
                    yield _sse(
                        {
                            "id": ident,
                            "object": object_name,
                            "created": created,
                            "model": model,
                            "system_fingerprint": f"maas-{session.version.ref}",
                            "choices": [],
                            "usage": _usage(len(prompt_ids), sum(tokens)),
                        }
                    )
                yield _sse("[DONE]")
            finally:
                # A client that disconnected lands here too: stop its sequences now.
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
