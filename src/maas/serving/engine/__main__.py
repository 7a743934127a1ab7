"""``python -m maas.serving.engine SOCKET_PATH``: run the engine process (see ``server``)."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from maas.config import Settings
from maas.serving.engine.server import run_engine


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m maas.serving.engine /path/to/engine.sock")
    # The socket file of an engine that was killed would refuse the bind.
    Path(sys.argv[1]).unlink(missing_ok=True)
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s:     engine: %(message)s"
    )
    # uvloop, as in the HTTP workers (uvicorn picks it): its loop turns around a
    # message in a fraction of asyncio's time.
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(run_engine(settings, sys.argv[1]))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # uvicorn[standard] brings it on Linux and macOS; not on Windows
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


if __name__ == "__main__":
    main()
