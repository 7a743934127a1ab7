"""The asynchronous SDK: the same call table over ``httpx.AsyncClient``."""

from __future__ import annotations

from maas.client.api import ManagementApi
from maas.client.transport import AsyncTransport

__all__ = ["AsyncMaasClient"]


class AsyncMaasClient(ManagementApi, AsyncTransport):
    """``async with AsyncMaasClient(url, api_key=key) as client: await client.list_jobs()``.

    Every method of :class:`~maas.client.MaasClient`, as a coroutine; file work (packing
    a push, extracting a download) runs in a worker thread.
    """
