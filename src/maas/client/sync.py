"""The synchronous SDK: the call table over ``httpx.Client``."""

from __future__ import annotations

from maas.client.api import ManagementApi
from maas.client.transport import SyncTransport, pack_directory, raise_for_error

__all__ = ["MaasClient", "pack_directory", "raise_for_error"]


class MaasClient(ManagementApi, SyncTransport):
    """``MaasClient("http://127.0.0.1:8000", api_key="maas-sk-...")``; a context manager.

    ``http=`` takes an ``httpx.Client`` of your own (proxies, TLS, an in-process app);
    its base URL and headers are then yours to set.
    """
