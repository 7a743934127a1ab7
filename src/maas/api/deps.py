"""Request dependencies: the core objects and the single authentication decision."""

from __future__ import annotations

from typing import Annotated

import anyio.to_thread
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from maas.config import Settings
from maas.errors import UnauthorizedError
from maas.registry.store import Registry
from maas.security.keys import KeyInfo, KeyStore

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


async def require_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> KeyInfo:
    """Authenticate the caller. Every non-health route depends on this one function."""
    if credentials is None or not credentials.credentials:
        raise UnauthorizedError(
            "missing API key: send 'Authorization: Bearer maas-sk-...' "
            "(the bootstrap admin key is in MAAS_HOME/admin.key)"
        )
    keys = get_keys(request)
    key = await anyio.to_thread.run_sync(keys.authenticate, credentials.credentials)
    request.state.key = key
    return key


RegistryDep = Annotated[Registry, Depends(get_registry)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
KeyDep = Annotated[KeyInfo, Depends(require_key)]


def actor(key: KeyInfo) -> str:
    return f"key:{key.name}#{key.id}"
