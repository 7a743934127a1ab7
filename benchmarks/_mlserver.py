"""MLServer 1.7.1 as ``serving.py``'s peer: its configuration, start and stop.

MLServer lives in its own virtual environment (``--mlserver-venv``, default
``/work/peers/mlserver``), never in the project's. Each workload gets its own
MLServer (one model each, so the process-tree memory of the MiniLM one holds
MiniLM only), configured in a temporary directory:

``settings.json`` (server-wide)
    ``host`` 127.0.0.1 and free ports for HTTP, gRPC and metrics;
    ``debug: false`` (MLServer's default ``true`` turns on uvicorn's access log
    and debug logging: its production setting is ``false``); ``parallel_workers``
    left at MLServer's default (1: inference runs in one worker process beside the
    HTTP process); ``metrics_dir`` / ``environments_dir`` inside the temp dir.
    Everything else is MLServer's default (gzip middleware on, metrics server on).

``<model>/model-settings.json``
    ``implementation``: a runtime of ``_mlserver_runtimes.py`` (copied beside it,
    where MLServer imports custom runtimes from); ``parameters.uri``: the model
    file or directory; ``max_batch_size`` / ``max_batch_time`` (seconds): adaptive
    batching, on when ``max_batch_size`` > 1.

Running this file does nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import free_port, stop_process, wait_http_ok

RUNTIMES = Path(__file__).resolve().parent / "_mlserver_runtimes.py"
DEFAULT_VENV = Path("/work/peers/mlserver")


def find(venv: Path) -> str | None:
    """Why MLServer cannot be used from ``venv``, or ``None`` when it can."""
    if not (venv / "bin" / "mlserver").is_file():
        return f"no MLServer at {venv} ({venv / 'bin' / 'mlserver'} is missing)"
    return None


def version(venv: Path) -> str:
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import mlserver; print(mlserver.__version__)"],
        capture_output=True,
        text=True,
    )
    return done.stdout.strip() or "unknown"


@dataclass
class MLServer:
    """One ``mlserver start`` process tree serving one model."""

    proc: subprocess.Popen[bytes]
    url: str  # http://127.0.0.1:PORT
    model: str
    root: Path
    log: Path
    settings: dict[str, Any]
    model_settings: dict[str, Any]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def infer_url(self) -> str:
        return f"{self.url}/v2/models/{self.model}/infer"

    def stop(self) -> None:
        stop_process(self.proc, grace=20)


def start(
    venv: Path,
    root: Path,
    *,
    model: str,
    implementation: str,
    uri: Path,
    max_batch_size: int = 0,
    max_batch_time: float = 0.0,
    extra: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 240,
) -> MLServer:
    """Write the settings under ``root``, start MLServer, return once the model is ready."""
    root.mkdir(parents=True)
    port = free_port()
    settings: dict[str, Any] = {
        "debug": False,
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "metrics_dir": str(root / ".metrics"),
        "environments_dir": str(root / ".envs"),
    }
    model_settings: dict[str, Any] = {
        "name": model,
        "implementation": f"_mlserver_runtimes.{implementation}",
        "parameters": {"uri": str(uri), "extra": extra or {}},
    }
    if max_batch_size > 1:
        model_settings["max_batch_size"] = max_batch_size
        model_settings["max_batch_time"] = max_batch_time
    (root / "settings.json").write_text(json.dumps(settings, indent=2))
    model_dir = root / model
    model_dir.mkdir()
    (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    shutil.copy(RUNTIMES, model_dir / RUNTIMES.name)
    log = root / "mlserver.log"
    # MLServer reads MLSERVER_* variables; the caller's shell must not change its settings.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MLSERVER")}
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [str(venv / "bin" / "mlserver"), "start", str(root)],
            cwd=root,
            env={**clean, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            process_group=0,  # its own process group: stop() ends its workers with it
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/v2/models/{model}/ready", proc, log, timeout=timeout)
    except RuntimeError as exc:
        stop_process(proc, grace=5)
        raise RuntimeError(f"MLServer ({model}) did not start: {exc}") from exc
    return MLServer(proc, url, model, root, log, settings, model_settings)
