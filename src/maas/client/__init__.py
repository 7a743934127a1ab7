"""Python SDK: talk to a maas server over HTTP."""

from maas.client.sync import MaasClient

__all__ = ["MaasClient"]
