"""The one boundary where exceptions become HTTP responses.

``/v2`` speaks the Open Inference Protocol shape ``{"error": "..."}``; every
other route speaks OpenAI's ``{"error": {"message", "type", "param", "code"}}``.
Unexpected exceptions become a 500 with a generic message: the traceback goes
to the log, never to the client.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from maas.errors import MaasError

log = logging.getLogger("maas.api")

_CODES = {
    400: ("invalid_request", "invalid_request_error"),
    401: ("unauthorized", "authentication_error"),
    403: ("forbidden", "permission_error"),
    404: ("not_found", "not_found_error"),
    405: ("method_not_allowed", "invalid_request_error"),
    409: ("conflict", "invalid_request_error"),
    413: ("payload_too_large", "invalid_request_error"),
    415: ("unsupported_media_type", "invalid_request_error"),
    429: ("rate_limited", "rate_limit_error"),
    503: ("unavailable", "server_error"),
}


def error_payload(
    path: str,
    status: int,
    message: str,
    *,
    code: str | None = None,
    type_: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    """The one error shape: V2's ``{"error": "..."}`` under /v2, OpenAI's elsewhere."""
    if path.startswith("/v2"):
        return {"error": message}
    default_code, default_type = _CODES.get(status, ("internal_error", "server_error"))
    return {
        "error": {
            "message": message,
            "type": type_ or default_type,
            "param": param,
            "code": code or default_code,
        }
    }


def error_response(
    request: Request,
    status: int,
    message: str,
    *,
    code: str | None = None,
    type_: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = error_payload(request.url.path, status, message, code=code, type_=type_, param=param)
    return JSONResponse(body, status_code=status, headers=headers)


def _auth_headers(status: int) -> dict[str, str] | None:
    return {"WWW-Authenticate": "Bearer"} if status == HTTPStatus.UNAUTHORIZED else None


async def _maas_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MaasError)
    if exc.status >= HTTPStatus.INTERNAL_SERVER_ERROR:
        log.error("request failed: %s %s: %s", request.method, request.url.path, exc)
    return error_response(
        request,
        int(exc.status),
        exc.message,
        code=exc.code,
        type_=exc.type,
        param=exc.param,
        headers=_auth_headers(exc.status) or getattr(exc, "headers", None),
    )


# pydantic's "not an object" errors for a whole body (a list, a string, raw bytes).
_NOT_AN_OBJECT = frozenset({"model_attributes_type", "dict_type", "model_type"})


def _json_invalid_message(error: Any, document: Any) -> str:
    """ "the request body is not valid JSON (line 1, column 62: Expecting ',' delimiter)"."""
    reason = str((error.get("ctx") or {}).get("error") or error.get("msg") or "")
    loc = tuple(error.get("loc", ()))
    position = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else None
    if position is None or not isinstance(document, str):
        return f"the request body is not valid JSON ({reason})"
    # The same line/column arithmetic as json.JSONDecodeError, from the offset FastAPI keeps.
    line = document.count("\n", 0, position) + 1
    column = position - document.rfind("\n", 0, position)
    return f"the request body is not valid JSON (line {line}, column {column}: {reason})"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        # FastAPI puts the character offset in ``loc``: it is no parameter.
        return error_response(request, 400, _json_invalid_message(first, exc.body))
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    param = ".".join(loc) or None
    message = first.get("msg", "invalid request")
    if param:
        message = f"{param}: {message}"
    elif first.get("type") in _NOT_AN_OBJECT and tuple(first.get("loc", ())) == ("body",):
        message = "the request body must be a JSON object"
    return error_response(request, 400, message, param=param)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(
        request, exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None)
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(request, 500, "internal server error; the server log has details")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(MaasError, _maas_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
