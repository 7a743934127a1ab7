"""Chat and completion bodies as the plain data generation is asked with.

The route validates a body (``schemas.chat``); this turns it into a
``GenerationRequest``: sampling parameters, the conversation with its tool
calls and results, the functions offered and how, the output format.
"""

from __future__ import annotations

import json

from maas.api.schemas.chat import ChatCompletionRequest, CompletionRequest
from maas.serving.generation import GenerationRequest, Message, SamplingParams, Tool


def sampling_params(
    body: ChatCompletionRequest | CompletionRequest,
    max_tokens: int | None,
    top_logprobs: int | None,
) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,  # None: the model fills what its context leaves
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        stop=body.stop_list(),
        top_logprobs=top_logprobs,
        min_p=body.min_p,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        repetition_penalty=body.repetition_penalty,
        logit_bias=body.bias_pairs(),
    )


def chat_request(body: ChatCompletionRequest) -> GenerationRequest:
    """The chat body as plain data: messages with their tool turns, tools, output format."""
    messages = tuple(
        Message(
            m.role,
            m.text(),
            tool_calls=tuple(
                (c.id, c.function.name, c.function.arguments) for c in m.tool_calls or ()
            ),
            tool_call_id=m.tool_call_id,
        )
        for m in body.messages
    )
    tools = tuple(
        Tool(
            t.function.name,
            t.function.description or "",
            # No parameters: a function of no arguments, as OpenAI reads it.
            json.dumps(t.function.parameters or {"type": "object", "properties": {}}),
        )
        for t in body.tools or ()
    )
    mode, named = body.tool_mode()
    response_format = body.response_format.type if body.response_format else "text"
    schema = body.response_format.json_schema if body.response_format else None
    top = (body.top_logprobs or 0) if body.logprobs else None
    return GenerationRequest(
        messages=messages,
        params=sampling_params(body, body.max_completion_tokens or body.max_tokens, top),
        n=body.n,
        response_format=response_format,
        json_schema=json.dumps(schema.json_schema) if schema is not None else None,
        strict=bool(schema and schema.strict),
        tools=tools,
        tool_choice=mode,
        tool_name=named,
        parallel_tool_calls=body.parallel_tool_calls,
    )
