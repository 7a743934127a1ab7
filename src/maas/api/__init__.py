"""HTTP layer: thin FastAPI routers over the transport-agnostic core."""

from maas.api.app import create_app

__all__ = ["create_app"]
