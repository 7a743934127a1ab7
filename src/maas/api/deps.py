"""Request dependencies: the core objects and the single authorization decision.

``require_key`` runs for every non-public route. In order: authenticate the
key (revoked and expired keys fail here), find the route's required scopes in
``api.permissions`` (no entry: refused, fail closed), check the key's model
allowlist against a model named in the path, count the request against the
key's RPM limit and check its monthly quotas. Routes that name their model in
the body call ``ensure_model_access`` themselves.
"""

from __future__ import annotations

import logging
from typing import Annotated

import anyio.to_thread
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from maas.api.permissions import MODEL_PATH_PARAMS, ROUTE_SCOPES
from maas.config import Settings
from maas.errors import ForbiddenError, NotFoundError, UnauthorizedError
from maas.registry.store import Registry
from maas.security.keys import KeyInfo, KeyStore
from maas.security.limits import RateLimiter, rate_headers
from maas.security.pii import PiiPolicy
from maas.security.usage import UsageRecorder

log = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="An API key: maas-sk-...")


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


def get_keys(request: Request) -> KeyStore:
    keys: KeyStore = request.app.state.keys
    return keys


def _model_name(ref: str) -> str:
    return ref.split("@")[0].split(":")[0]


def ensure_model_access(request: Request, ref: str, *, hide: bool = False) -> None:
    """403 when the key's allowlist excludes the model (404 with ``hide``: do not reveal it)."""
    key: KeyInfo | None = getattr(request.state, "key", None)
    name = _model_name(ref)
    if key is None or key.allows_model(name):
        return
    if hide:
        raise NotFoundError(f"model {name!r} not found", param="model")
    raise ForbiddenError(f"this API key may not use model {name!r}", param="model")


async def require_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> KeyInfo:
    """Authenticate and authorize the caller. Every non-public route depends on this."""
    if credentials is None or not credentials.credentials:
        raise UnauthorizedError(
            "missing API key: send 'Authorization: Bearer maas-sk-...' "
            "(the bootstrap admin key is in MAAS_HOME/admin.key)"
        )
    keys = get_keys(request)
    key = await anyio.to_thread.run_sync(keys.authenticate, credentials.credentials)
    request.state.key = key

    route = request.scope.get("route")
    template = getattr(route, "path", None)
    required = ROUTE_SCOPES.get((request.method, template or ""))
    if required is None:
        log.error("no authorization decision for %s %s; refusing", request.method, template)
        raise ForbiddenError(f"no authorization rule covers {request.method} {template}")
    if not key.has_scope(*required):
        raise ForbiddenError(
            f"this API key lacks the scope for {request.method} {template}: needs "
            f"{' or '.join(sorted(required))}, has {', '.join(key.scopes) or 'none'}"
        )
    for param in MODEL_PATH_PARAMS:
        value = request.path_params.get(param)
        if isinstance(value, str):
            ensure_model_access(request, value, hide=template == "/v1/models/{model_id}")

    limiter: RateLimiter = request.app.state.limiter
    if key.rpm_limit is not None:
        state = await limiter.acquire_request(key.id, key.rpm_limit)
        request.state.rate_headers = rate_headers(state, None)
    if key.tpm_limit is not None and "infer" in required:
        # Room for at least one token; routes with max_tokens check their own figure.
        tokens = await limiter.check_tokens(key.id, key.tpm_limit, 1)
        request.state.rate_headers = {
            **getattr(request.state, "rate_headers", {}),
            **rate_headers(None, tokens),
        }
    if "infer" in required:
        recorder: UsageRecorder = request.app.state.usage
        await recorder.check_quota(
            key.id,
            request_quota=key.monthly_request_quota,
            token_quota=key.monthly_token_quota,
        )
    return key


def key_pii_policy(request: Request) -> PiiPolicy | None:
    """The PII policy of the calling key (the model's own policy is added by the data plane)."""
    key: KeyInfo | None = getattr(request.state, "key", None)
    return PiiPolicy.parse(key.pii_policy) if key is not None and key.pii_policy else None


RegistryDep = Annotated[Registry, Depends(get_registry)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
KeyDep = Annotated[KeyInfo, Depends(require_key)]


def actor(key: KeyInfo) -> str:
    return f"key:{key.name}#{key.id}"
