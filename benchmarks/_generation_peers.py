"""The servers the generation benchmark compares: maas, llama-server, transformers serve.

This module only defines things; running it does nothing.

``llama-server`` is llama.cpp's own C++ server. It is not installed by maas:
build it from the ``vendor/llama.cpp`` of the llama-cpp-python source that
maas uses (same llama.cpp, same CPU flags) and point ``MAAS_BENCH_LLAMA_SERVER``
at the binary, or put it on ``PATH``::

    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36
    tar xzf llama_cpp_python-0.3.36.tar.gz && cd llama_cpp_python-0.3.36/vendor/llama.cpp
    cmake -B build -G Ninja -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON \\
        -DGGML_F16C=ON -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release
    cmake --build build --target llama-server      # ~10 min on 2 cores
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    headers: dict[str, str]
    model: str  # the model field requests send


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, path: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server did not start")


def stop(server: Server) -> None:
    proc = server.proc
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def start_maas(model: Path, home: Path, name: str, env: dict[str, str] | None = None) -> Server:
    """``maas serve`` with ``model`` (a GGUF file or an HF directory) pushed and loaded."""
    from maas.config import Settings
    from maas.registry.store import Registry

    registry = Registry(Settings(home=home))
    try:
        registry.push(model, name, task="text-generation")
    finally:
        registry.close()
    port = free_port()
    environment = {
        **os.environ,
        "MAAS_HOME": str(home),
        "MAAS_LOG_LEVEL": "warning",
        **(env or {}),
    }
    proc = subprocess.Popen(
        [str(BIN / "maas"), "serve", "--port", str(port)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, "/readyz", proc)
    key = (home / "admin.key").read_text().strip()
    headers = {"Authorization": f"Bearer {key}"}
    httpx.post(f"{url}/admin/v1/models/{name}/versions/1/load", headers=headers, timeout=300)
    return Server("maas", proc, url, headers, name)


def llama_server_binary() -> Path | None:
    configured = os.environ.get("MAAS_BENCH_LLAMA_SERVER")
    if configured:
        return Path(configured)
    found = shutil.which("llama-server")
    return Path(found) if found else None


def start_llama_server(binary: Path, gguf: Path, slots: int, threads: int) -> Server:
    """llama.cpp's server as the issue runs it: ``-np slots -cb -t threads``."""
    port = free_port()
    proc = subprocess.Popen(
        [
            str(binary),
            "-m",
            str(gguf),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "-np",
            str(slots),
            "-cb",
            "-t",
            str(threads),
            "-c",
            str(slots * 512),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, "/health", proc)
    return Server("llama-server", proc, url, {}, "smollm2")


def start_transformers_serve(model_dir: Path) -> Server:
    port = free_port()
    proc = subprocess.Popen(
        [
            str(BIN / "transformers"),
            "serve",
            str(model_dir),
            "--continuous-batching",
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, "/health", proc)
    return Server("transformers serve", proc, url, {}, str(model_dir))


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (maas's engine is one), in MB."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for one in pids:
        for line in Path(f"/proc/{one}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024
