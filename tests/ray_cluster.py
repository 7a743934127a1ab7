"""A real Ray cluster on this machine for the Ray Serve tests, one per test session.

``ray start --head --block`` in its own process group: the tests connect to it
(``MAAS_RAY_ADDRESS``, or ``ray.init`` in the pytest process) and stopping the
group at the end takes every Ray process with it (GCS, raylet, the Serve
controller, replicas). Two CPUs, so replicas ask for fractions of one; Serve's
autoscaling metrics are pushed every half second instead of every ten, so that
an autoscaling test takes seconds.

Token authentication, with a token of its own: Ray turns it on for a new cluster
whenever ``~/.ray/auth_token`` exists (any earlier ``ray.init()`` on the machine
writes one), and a driver that does not know the token is then refused.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CPUS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_env(temp_dir: Path) -> dict[str, str]:
    """Read by Ray in the cluster, in `maas serve --ray` and in pytest (when it imports ray)."""
    return {
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(temp_dir / "auth_token"),
        "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
        "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    }


@dataclass(frozen=True)
class RayCluster:
    address: str  # host:port of its GCS, for MAAS_RAY_ADDRESS and ray.init
    temp_dir: Path  # its logs: session_latest/logs/serve/ holds each replica's


def start_ray_cluster() -> Iterator[RayCluster]:
    ray_bin = Path(sys.executable).parent / "ray"
    # Short: Ray puts Unix sockets under it (a path limit of about 100 bytes).
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    port = free_port()
    token = temp_dir / "auth_token"
    token.write_text(secrets.token_hex(32))
    # For the drivers of the tests, and the servers they start; restored at the end.
    saved = {name: os.environ.get(name) for name in ray_env(temp_dir)}
    os.environ.update(ray_env(temp_dir))
    log = (temp_dir / "head.log").open("w")
    proc = subprocess.Popen(
        [
            str(ray_bin),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            # Ports of their own, so that a second cluster on the machine (a benchmark,
            # another run) does not collide on Ray's fixed defaults (10001, 52365).
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--num-cpus={CPUS}",
            "--include-dashboard=false",
            "--disable-usage-stats",
            "--object-store-memory=200000000",
            f"--temp-dir={temp_dir}",
        ],
        env=dict(os.environ),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopping it stops all of Ray
    )
    cluster = RayCluster(f"127.0.0.1:{port}", temp_dir)
    try:
        _wait_ready(proc, temp_dir)
        yield cluster
    finally:
        _stop(proc)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _wait_ready(proc: subprocess.Popen[bytes], temp_dir: Path) -> None:
    deadline = time.monotonic() + 90
    while "Ray runtime started" not in (temp_dir / "head.log").read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ray start failed; see {temp_dir / 'head.log'}")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    # A throwaway cluster in a temp dir: no need to wait out Ray's own slow shutdown
    # (it took the whole 20 s it was once given).
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=3)
    # Whatever of the group is still there (workers exit on their own, slower).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
