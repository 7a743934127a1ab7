"""``DrainingServer``: uvicorn's server with SIGTERM as a graceful drain that exits 0.

Its own module so that ``maas`` commands other than ``serve`` do not import uvicorn.
What a drain does is described in ``cli/serve.py``.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

import uvicorn

log = logging.getLogger("maas.serve")

DRAIN_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DrainingServer(uvicorn.Server):
    """The first SIGTERM/SIGINT calls ``on_drain`` (from the signal handler: it must
    only flip flags), then uvicorn's graceful shutdown runs, bounded by the config's
    ``timeout_graceful_shutdown``; a second SIGINT forces the exit, as in uvicorn.

    uvicorn re-raises the signal once it has shut down, so that the process dies of
    it (exit status 143 for SIGTERM). A server that drained as asked has done its
    job: it returns, and the process exits 0, which supervisors and orchestrators
    read as a clean stop.
    """

    def __init__(self, config: uvicorn.Config, on_drain: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_drain = on_drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            log.warning(
                "%s: draining, in-flight requests have up to %s s",
                signal.Signals(sig).name,
                self.config.timeout_graceful_shutdown,
            )
            self._on_drain()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in DRAIN_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
