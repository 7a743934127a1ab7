"""Request dependencies: the core objects, admission and the request context.

``require_key`` runs for every non-public route: it looks the route template up
in ``api.permissions.RULES`` and hands the decision to
``security.admission.Admission`` (authenticate, scopes, allowlist for models
named in the path, and for metered inference routes RPM, TPM room and quotas).
Inference routes then take a ``RequestContext`` (``CtxDep``) and pass it down
to the data plane explicitly; the trust middleware settles it afterwards.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import anyio.to_thread
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from maas.api.permissions import MODEL_PATH_PARAMS, RULES
from maas.config import Settings
from maas.errors import InvalidRequestError, PayloadTooLargeError
from maas.registry.refs import model_name
from maas.registry.store import Registry
from maas.security.admission import Admission, Admitted
from maas.security.keys import KeyInfo, KeyStore
from maas.serving.context import RequestContext
from maas.serving.dataplane import DataPlane

log = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="An API key: maas-sk-...")


# Every dependency here is ``async def`` although none awaits: FastAPI runs a plain
# ``def`` dependency on a worker thread, a hop that cost more than the work itself.


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


async def get_keys(request: Request) -> KeyStore:
    keys: KeyStore = request.app.state.keys
    return keys


def get_admission(request: Request) -> Admission:
    admission: Admission = request.app.state.admission
    return admission


async def bearer_credential(request: Request) -> str | None:
    """The key sent as ``Authorization: Bearer <key>``, read by the same ``HTTPBearer``."""
    credentials = await _bearer(request)
    return credentials.credentials if credentials else None


async def admit(request: Request, credential: str | None) -> Admitted:
    """Admit the caller of a non-public route (see ``security.admission``).

    ``require_key`` calls this for every FastAPI route; ``InferenceRoute`` calls it
    directly (``api/inference_route.py``). The route template comes from the
    matched route, its rule from ``api.permissions.RULES``.
    """
    template = getattr(request.scope.get("route"), "path", None) or ""
    method = request.method
    admission = get_admission(request)
    if not admission.enabled:
        admitted = Admitted(key=None, metered=False)
    else:
        key = await admission.authenticate(credential)
        # The audit middleware names the caller even when authorization refuses it.
        request.state.key = key
        admitted = await admission.authorize(
            key,
            route=f"{method} {template}",
            rule=RULES.get((method, template)),
            path_models=[
                model_name(value)
                for param in MODEL_PATH_PARAMS
                if isinstance(value := request.path_params.get(param), str)
            ],
            hide_models=template == "/v1/models/{model_id}",
        )
    # The trust middleware settles metered requests from what admission decided.
    request.state.admitted = admitted
    return admitted


async def require_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Admitted:
    """Admit the caller (``admit``). Every non-public route depends on this."""
    return await admit(request, credentials.credentials if credentials else None)


AdmittedDep = Annotated[Admitted, Depends(require_key)]


def make_context(request: Request, admitted: Admitted) -> RequestContext:
    """The one context of an inference request, passed down to the data plane."""
    settings: Settings = request.app.state.settings
    timeout = settings.request_timeout_seconds
    ctx = RequestContext(admitted, deadline=time.monotonic() + timeout if timeout else None)
    ctx.request_id = request.headers.get("x-request-id", "")[:128]
    pinned = request.headers.get("x-maas-version")
    if pinned is not None:
        if not (pinned.isascii() and pinned.isdigit() and int(pinned) >= 1):
            raise InvalidRequestError(
                f"x-maas-version must be a version number, not {pinned[:40]!r}",
                param="x-maas-version",
            )
        ctx.pinned_version = int(pinned)
    request.state.ctx = ctx
    return ctx


async def request_context(request: Request, admitted: AdmittedDep) -> RequestContext:
    return make_context(request, admitted)


async def current_key(admitted: AdmittedDep) -> KeyInfo | None:
    """The calling key; None only with the trust layer off (MAAS_AUTH=off)."""
    return admitted.key


RegistryDep = Annotated[Registry, Depends(get_registry)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_dataplane(request: Request) -> DataPlane:
    dataplane: DataPlane = request.app.state.dataplane
    return dataplane


KeyDep = Annotated[KeyInfo | None, Depends(current_key)]
DataPlaneDep = Annotated[DataPlane, Depends(get_dataplane)]
CtxDep = Annotated[RequestContext, Depends(request_context)]


def actor(key: KeyInfo | None) -> str:
    return f"key:{key.name}#{key.id}" if key is not None else "anonymous (MAAS_AUTH=off)"


# ------------------------------------------------------- helpers of the routers

T = TypeVar("T")


async def run_sync(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Registry calls touch the database and disk: keep them off the event loop."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


def version_ref(name: str, version: str) -> str:
    """``3`` means version 3; anything else is an alias name."""
    return f"{name}:{version}" if version.isascii() and version.isdigit() else f"{name}@{version}"


@asynccontextmanager
async def spooled_upload(
    request: Request, settings: Settings, limit: int, empty_message: str
) -> AsyncIterator[Path]:
    """Stream a request body to a temporary file under MAAS_HOME/tmp; removed afterwards.

    Never held in memory; over ``limit`` bytes is a 413, an empty body a 400.
    """
    fd, tmp_name = await run_sync(tempfile.mkstemp, dir=settings.tmp_dir, prefix="recv-")
    tmp = Path(tmp_name)
    try:
        received = 0
        # Page-cache writes of <=64 KiB chunks are cheap enough to stay on the loop.
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise PayloadTooLargeError(
                        f"upload exceeds the {limit} byte limit (MAAS_MAX_UPLOAD_BYTES)"
                    )
                out.write(chunk)
        if received == 0:
            raise InvalidRequestError(empty_message, param="body")
        yield tmp
    finally:
        await run_sync(tmp.unlink, missing_ok=True)
