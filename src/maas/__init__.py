"""maas: a self-hosted Model-as-a-Service platform."""

from maas.config import Settings
from maas.errors import MaasError

__version__ = "0.1.0"

__all__ = ["MaasError", "Settings", "__version__"]
