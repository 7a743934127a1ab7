"""`maas serve` processes a test starts, signals and stops itself (drain, scale-out).

``tests/e2e/conftest.py``'s ``start_server`` hides its process; these tests need
it: to send SIGTERM, read the exit status, or kill one instance of several.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.e2e.conftest import free_port


@dataclass
class Instance:
    url: str
    home: Path
    proc: subprocess.Popen[bytes]

    def kill(self) -> None:
        """SIGKILL the whole instance (its process group): a machine lost, no cleanup."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def launch(home: Path, env: dict[str, str] | None = None, *, name: str = "server") -> Instance:
    """Start `maas serve` on a free port with ``MAAS_HOME=home``; return once /readyz is 200."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    full_env = {
        **os.environ,
        "MAAS_HOME": str(home),
        "MAAS_LOG_LEVEL": "warning",
        "MAAS_WORKERS": "1",
        **(env or {}),
    }
    with (home / f"{name}.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "maas", "serve", "--port", str(port)],
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,  # its own process group, so that kill() takes all of it
        )
    instance = Instance(f"http://127.0.0.1:{port}", home, proc)
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{instance.url}/readyz", timeout=1).status_code == 200:
                return instance
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            instance.stop()
            raise RuntimeError(f"{name} did not start; see {home / f'{name}.log'}")
        time.sleep(0.2)
