"""Python SDK: talk to a maas server over HTTP, synchronously or with asyncio.

Each call of the management API is described once (:mod:`maas.client.calls` and the
``calls_*`` modules, listed in :mod:`maas.client.api`) and executed by a sync or an async
transport (:mod:`maas.client.transport`). Errors are the :mod:`maas.errors` types the
server raised. Registry answers are the registry's pydantic views (``ModelInfo``,
``VersionInfo``); the others are typed dicts (:mod:`maas.client.views`, which says why).
"""

from maas.client.aio import AsyncMaasClient
from maas.client.sync import MaasClient
from maas.client.transport import raise_for_error

__all__ = ["AsyncMaasClient", "MaasClient", "raise_for_error"]
