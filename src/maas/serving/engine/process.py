"""EngineProcess: starts the engine process and restarts it whenever it dies.

Used by ``maas serve --workers N``. A watcher thread waits on the child; when
it exits without being asked to (a crash, an OOM kill, SIGKILL), the watcher
starts a new one on the same address after a short pause (doubling up to a few
seconds while it keeps dying at once). HTTP workers fail the calls that were in
flight with 503 and reconnect by themselves (``client.RemoteHost``).

The engine runs ``--supervised``: it ignores SIGINT and SIGTERM (a signal to the
whole process group must not stop the models under the workers' draining streams)
and stops when its standard input closes — ``stop``, which the supervisor calls
once every worker has drained, or the supervisor's own death.
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
            if self._proc is not None and self._proc.stdin is not None:
                self._proc.stdin.close()  # the pipe of the engine that died
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "maas.serving.engine", self.address, "--supervised"],
                env=self._env,
                stdin=subprocess.PIPE,  # closed by stop(): the engine's signal to stop
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
        if proc is not None and proc.stdin is not None:
            proc.stdin.close()
        if proc is not None and proc.poll() is None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._watcher is not None:
            self._watcher.join(timeout)
