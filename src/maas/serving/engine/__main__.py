"""``python -m maas.serving.engine ADDRESS``: run the engine process (see ``server``)."""

from __future__ import annotations

import asyncio
import logging
import sys

from maas.config import Settings
from maas.serving.engine.server import run_engine


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m maas.serving.engine ipc:///path/to/engine.sock")
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s:     engine: %(message)s"
    )
    asyncio.run(run_engine(settings, sys.argv[1]))


if __name__ == "__main__":
    main()
