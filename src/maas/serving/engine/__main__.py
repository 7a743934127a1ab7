"""``python -m maas.serving.engine SOCKET_PATH [--supervised]``: run the engine process.

``--supervised`` (how ``maas serve --workers N`` starts it, ``engine.process``): the
engine stops when its standard input closes, not on a signal (see ``run_engine``).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from maas.config import Settings
from maas.serving.engine.server import run_engine

USAGE = "usage: python -m maas.serving.engine /path/to/engine.sock [--supervised]"


def main() -> None:
    args = sys.argv[1:]
    supervised = "--supervised" in args
    paths = [a for a in args if a != "--supervised"]
    if len(paths) != 1 or paths[0].startswith("-"):
        sys.exit(USAGE)
    # The socket file of an engine that was killed would refuse the bind.
    Path(paths[0]).unlink(missing_ok=True)
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s:     engine: %(message)s"
    )
    # uvloop, as in the HTTP workers (uvicorn picks it): its loop turns around a
    # message in a fraction of asyncio's time.
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(run_engine(settings, paths[0], supervised=supervised))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # uvicorn[standard] brings it on Linux and macOS; not on Windows
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


if __name__ == "__main__":
    main()
