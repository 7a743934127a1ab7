"""`maas serve` processes a test starts, signals and stops itself (drain, scale-out).

``tests/e2e/conftest.py``'s ``start_server`` hides its process; these tests need
it: to send SIGTERM, read the exit status, or kill one instance of several.
``two_instances`` is the pair that test_scale_out.py and test_zero_downtime.py run
against.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnx
from onnx import numpy_helper

from maas.config import Settings
from maas.registry.store import Registry
from tests.e2e.conftest import free_port
from tests.helpers import make_onnx_file
from tests.pg import fresh_postgres_url

X = [1.0, 0.0, 0.0, 0.0]  # the input the pair's `affine` versions tell apart
V1_Y = [1.0, 2.0, 3.0]  # x @ W + 1 for the first row of W = arange(12).reshape(4, 3)
V2_Y = [10.0, 11.0, 12.0]  # the same with a bias of 10


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


def onnx_with_bias(path: Path, bias: float) -> Path:
    """The tiny affine ONNX model (tests.helpers) with every bias set to ``bias``."""
    model = onnx.load(str(make_onnx_file(path)))
    for init in model.graph.initializer:
        if init.name == "b":
            init.CopyFrom(numpy_helper.from_array(np.full(3, bias, dtype=np.float32), "b"))
    onnx.save(model, str(path))
    return path


@dataclass
class Pair:
    """Two instances of one service (``two_instances``)."""

    a: Instance  # one process
    b: Instance  # a supervisor, two HTTP workers and an engine
    key: str  # the bootstrap admin key, valid on both
    env: dict[str, str]  # the shared settings both were launched with (for a relaunch)
    root: Path
    settings: Settings  # a Registry on the shared database and store

    @property
    def both(self) -> tuple[Instance, Instance]:
        return self.a, self.b

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@contextlib.contextmanager
def two_instances(
    root: Path, redis_url: str, *, extra_models: tuple[str, ...] = ()
) -> Iterator[Pair]:
    """Instance A (one process) and B (``MAAS_WORKERS=2``), each with its own MAAS_HOME
    under ``root`` as on two machines, sharing a throwaway PostgreSQL database, a Redis
    namespace of their own and a ``file://`` artifact store. Registered first:
    ``affine`` 1 (bias 1, ``production``) and 2 (bias 10), and each of ``extra_models``
    (bias 1). Both are stopped at the end — whichever ``pair.a``/``pair.b`` are then
    (a test may relaunch one)."""
    store = root / "shared-blobs"
    for database_url in fresh_postgres_url():
        env = {
            "MAAS_DATABASE_URL": database_url,
            "MAAS_REDIS_URL": redis_url,
            "MAAS_REDIS_NAMESPACE": f"test-{uuid.uuid4().hex}",
            "MAAS_ARTIFACT_URL": store.as_uri(),
        }
        settings = Settings(
            home=root / "pusher", database_url=database_url, artifact_url=store.as_uri()
        )
        registry = Registry(settings)
        try:
            registry.push(onnx_with_bias(root / "v1" / "m.onnx", 1.0).parent, "affine")
            registry.push(onnx_with_bias(root / "v2" / "m.onnx", 10.0).parent, "affine")
            registry.set_alias("affine", "production", 1)
            for name in extra_models:
                registry.push(onnx_with_bias(root / name / "m.onnx", 1.0).parent, name)
        finally:
            registry.close()
        a = launch(root / "a", env, name="a")
        # The first instance created the bootstrap admin key; it is valid on both.
        pair = Pair(a, a, (root / "a" / "admin.key").read_text().strip(), env, root, settings)
        try:
            pair.b = launch(root / "b", {**env, "MAAS_WORKERS": "2"}, name="b")
            try:
                yield pair
            finally:
                pair.b.stop()
        finally:
            pair.a.stop()
