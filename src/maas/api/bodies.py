"""JSON request bodies: parsed in one step on hot routes, read whatever the Content-Type.

``Model.model_validate_json`` parses and validates in pydantic-core, without
FastAPI's body machinery (``json.loads``, then validation of the resulting
dict): measured here it is the cheaper path for small bodies. Its errors go
through the same ``RequestValidationError`` boundary as FastAPI's own, so the
400s look the same. The route declares the body for the OpenAPI document with
``openapi_body``.

OpenAI's API reads a JSON body whatever its Content-Type says, and so do we:
``curl -d '{...}'`` sends ``application/x-www-form-urlencoded``, and a body
that parses as JSON is taken as JSON (``read_body``, and ``JsonBodyRoute`` for
routes whose body FastAPI reads). A body that is not JSON and was not sent as
JSON gets a 400 that says to send ``Content-Type: application/json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fastapi import Request, Response, params
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.types import Message

from maas.errors import InvalidRequestError

M = TypeVar("M", bound=BaseModel)


def declares_json(content_type: str | None) -> bool:
    """Whether a Content-Type header says JSON (``application/json``, ``application/*+json``)."""
    media = (content_type or "").partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def json_decode_error(exc: json.JSONDecodeError) -> RequestValidationError:
    """FastAPI's own error for a body that is not JSON (``api/errors.py`` words it)."""
    return RequestValidationError(
        [
            {
                "type": "json_invalid",
                "loc": ("body", exc.pos),
                "msg": "JSON decode error",
                "input": {},
                "ctx": {"error": exc.msg},
            }
        ],
        body=exc.doc,
    )


def content_type_error(content_type: str | None, exc: ValueError) -> InvalidRequestError:
    """A body that is not JSON, sent without saying it is JSON: say what to send."""
    sent = f"sent as {content_type!r}" if content_type else "sent without a Content-Type"
    if isinstance(exc, json.JSONDecodeError):
        reason = f"line {exc.lineno}, column {exc.colno}: {exc.msg}"
    else:
        reason = "it is not UTF-8 text"
    return InvalidRequestError(
        f"this route takes a JSON body: send Content-Type: application/json "
        f"(the body, {sent}, is not JSON: {reason})"
    )


def _parse_json(raw: bytes, content_type: str | None) -> Any:
    """``raw`` as JSON, or the 400 that explains why it is not."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        if declares_json(content_type):
            raise json_decode_error(exc) from exc
        raise content_type_error(content_type, exc) from exc
    except UnicodeDecodeError as exc:
        if declares_json(content_type):
            raise InvalidRequestError(
                "the request body is not valid JSON: it is not UTF-8"
            ) from exc
        raise content_type_error(content_type, exc) from exc


async def read_body(request: Request, model: type[M]) -> M:
    """The request body as ``model`` (any Content-Type: OpenAI clients send JSON)."""
    raw = await request.body()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors(include_url=False)):
            # The stdlib's parser words the position as FastAPI's routes do; a body it
            # accepts (pydantic-core is stricter) keeps pydantic's error below.
            _parse_json(raw, request.headers.get("content-type"))
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from exc


def _relabelled_as_json(request: Request, body: bytes) -> Request:
    """The same request, its Content-Type saying JSON, its (already read) body replayed."""
    headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
    headers.append((b"content-type", b"application/json"))
    replayed = False

    async def receive() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await request.receive()  # later messages: the client's disconnect

    return Request({**request.scope, "headers": headers}, receive)


class JsonBodyRoute(APIRoute):
    """A route whose JSON body FastAPI reads, taken as JSON whatever its Content-Type."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None or isinstance(self.body_field.field_info, params.Form):
            return handler

        async def tolerant(request: Request) -> Response:
            content_type = request.headers.get("content-type")
            if not declares_json(content_type):
                body = await request.body()
                if body:
                    _parse_json(body, content_type)
                    request = _relabelled_as_json(request, body)
            return await handler(request)

        return tolerant


def openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring ``model`` as the route's required JSON body."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }
