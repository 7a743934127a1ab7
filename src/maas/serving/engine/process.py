"""EngineProcess: starts the engine process and restarts it whenever it dies.

Used by ``maas serve --workers N``. A watcher thread waits on the child; when
it exits without being asked to (a crash, an OOM kill, SIGKILL), the watcher
starts a new one on the same address after a short pause (doubling up to a few
seconds while it keeps dying at once). HTTP workers fail the calls that were in
flight with 503 and reconnect by themselves (``client.RemoteHost``).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time

log = logging.getLogger("maas.engine")

MAX_BACKOFF_SECONDS = 5.0


class EngineProcess:
    def __init__(self, address: str, env: dict[str, str]) -> None:
        self.address = address
        self._env = env
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._watcher: threading.Thread | None = None

    def _spawn(self) -> None:
        with self._lock:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "maas.serving.engine", self.address], env=self._env
            )

    def start(self) -> None:
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="engine watcher", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        backoff = 0.2
        while not self._stopping.is_set():
            proc = self._proc
            assert proc is not None
            started = time.monotonic()
            code = proc.wait()
            if self._stopping.is_set():
                return
            log.error("the model engine process exited (code %s); restarting it", code)
            if time.monotonic() - started > 30:
                backoff = 0.2  # it ran a good while: a fresh failure, not a crash loop
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
            self._spawn()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._watcher is not None:
            self._watcher.join(timeout)
