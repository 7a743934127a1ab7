"""InferenceRoute and InferenceLane: how the metered inference endpoints are served.

FastAPI solves a route's dependency tree on every request. For the inference
routes that tree is always the same three things — admit the caller, make the
request context, find the data plane — and solving it generically cost more
than the rest of a tiny V2 request's work in the HTTP worker (profiled under
``wrk``: ~21 % of the worker's active time). This route class keeps FastAPI's
declaration of the route (path, OpenAPI document, the ``require_key``
dependency the permission table and its test walk) and replaces only the
per-request handler: it calls ``admit`` (exactly what ``require_key`` calls)
and ``make_context`` itself, then the endpoint with its arguments.

The endpoints it serves take only these parameters, found once when the route
is built: ``request: Request``, ``ctx: CtxDep``, ``dataplane: DataPlaneDep`` and
``str`` path parameters. Anything else — a new dependency, a body model, a
router-level dependency other than ``require_key`` — is refused when the app is
built, so a dependency can never be declared on such a route and silently not
run. Errors propagate to the one error boundary (``api/errors.py``) as from any
route.

``InferenceLane`` goes one step further for the same routes: an ASGI middleware,
innermost (inside the trust and audit middleware, so limits, headers, metering
and auditing are untouched), that matches a request against these routes'
own compiled paths and calls their handler directly — skipping FastAPI's
router, its exception and exit-stack middleware and the per-route request
wrapper (~15 % of a worker's time on a tiny V2 request). Its errors go
through Starlette's ``ExceptionMiddleware`` with the app's own handler table,
so they answer exactly as they would from the router. Every other request
passes through to FastAPI.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, get_type_hints

from fastapi import FastAPI, Request, Response
from fastapi.params import Depends
from fastapi.routing import APIRoute
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.routing import BaseRoute, compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from maas.api.deps import (
    admit,
    bearer_credential,
    get_dataplane,
    make_context,
    request_context,
    require_key,
)

Handler = Callable[[Request], Coroutine[Any, Any, Response]]

# What an endpoint parameter is filled with, by kind.
_REQUEST, _CONTEXT, _DATAPLANE, _PATH = "request", "ctx", "dataplane", "path"


class InferenceRoute(APIRoute):
    def get_route_handler(self) -> Handler:
        for dependency in self.dependencies:
            if dependency.dependency is not require_key:
                raise TypeError(
                    f"{self.path}: InferenceRoute runs only require_key before its "
                    f"endpoint, not {dependency.dependency!r}"
                )
        if not any(d.dependency is require_key for d in self.dependencies):
            raise TypeError(f"{self.path}: an InferenceRoute needs require_key")
        endpoint = self.endpoint
        parameters = _parameters(endpoint, self.path)

        async def handle(request: Request) -> Response:
            admitted = await admit(request, await bearer_credential(request))
            ctx = make_context(request, admitted)
            path_params = request.path_params
            arguments: dict[str, Any] = {}
            for name, kind in parameters:
                if kind == _PATH:
                    arguments[name] = path_params[name]
                elif kind == _CONTEXT:
                    arguments[name] = ctx
                elif kind == _REQUEST:
                    arguments[name] = request
                else:
                    arguments[name] = await get_dataplane(request)
            response: Response = await endpoint(**arguments)
            return response

        return handle


def _parameters(endpoint: Callable[..., Any], path: str) -> list[tuple[str, str]]:
    """``(name, kind)`` of each endpoint parameter; TypeError for one this class cannot fill."""
    if not inspect.iscoroutinefunction(endpoint):
        raise TypeError(f"{path}: an InferenceRoute endpoint must be async")
    hints = get_type_hints(endpoint, include_extras=True)
    kinds: list[tuple[str, str]] = []
    for name in inspect.signature(endpoint).parameters:
        hint = hints.get(name)
        dependency = _dependency_of(hint)
        if hint is Request:
            kinds.append((name, _REQUEST))
        elif dependency is request_context:
            kinds.append((name, _CONTEXT))
        elif dependency is get_dataplane:
            kinds.append((name, _DATAPLANE))
        elif hint is str and f"{{{name}}}" in path:
            kinds.append((name, _PATH))
        else:
            raise TypeError(f"{path}: InferenceRoute cannot fill parameter {name!r} ({hint!r})")
    return kinds


def _dependency_of(hint: Any) -> Callable[..., Any] | None:
    for meta in getattr(hint, "__metadata__", ()):
        if isinstance(meta, Depends):
            return meta.dependency
    return None


class InferenceLane:
    def __init__(self, app: ASGIApp, *, fastapi: FastAPI, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self._routes = []
        for route in routes:
            if not isinstance(route, InferenceRoute):
                raise TypeError(f"InferenceLane serves InferenceRoutes only, not {route!r}")
            regex, _, convertors = compile_path(route.path)
            if any(type(c).__name__ != "StringConvertor" for c in convertors.values()):
                raise TypeError(f"{route.path}: InferenceLane matches str path parameters only")
            self._routes.append((regex, route, route.get_route_handler()))
        # The app's handlers but the catch-all, which (as in Starlette's own stack) sits
        # outermost in ServerErrorMiddleware and still answers what nothing else catches.
        handlers = {
            kind: handler
            for kind, handler in fastapi.exception_handlers.items()
            if kind not in (500, Exception)
        }
        self._serve_guarded = ExceptionMiddleware(self._serve, handlers=handlers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            for regex, route, handler in self._routes:
                match = regex.match(path)
                if match is not None:
                    scope["path_params"] = match.groupdict()
                    scope["route"] = route  # admission reads the template from it
                    scope["endpoint"] = route.endpoint
                    scope["maas.handler"] = handler
                    await self._serve_guarded(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    @staticmethod
    async def _serve(scope: Scope, receive: Receive, send: Send) -> None:
        handler: Handler = scope["maas.handler"]
        response = await handler(Request(scope, receive, send))
        await response(scope, receive, send)
