"""``make run`` honours MAAS_HOST/MAAS_PORT from the environment, and HOST=/PORT= over them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _serve_line(*args: str, **env: str) -> str:
    clean = {
        k: v for k, v in os.environ.items() if k not in ("HOST", "PORT", "MAAS_HOST", "MAAS_PORT")
    }
    done = subprocess.run(
        ["make", "-n", "run", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    (line,) = [x for x in done.stdout.splitlines() if " serve " in x]
    return line


def test_make_run_defaults_to_localhost_8000() -> None:
    assert "serve --host 127.0.0.1 --port 8000 " in _serve_line()


def test_make_run_honours_maas_port_and_maas_host_from_the_environment() -> None:
    assert "--host 127.0.0.1 --port 9001 " in _serve_line(MAAS_PORT="9001")
    assert "--host 0.0.0.0 --port 8000 " in _serve_line(MAAS_HOST="0.0.0.0")


def test_make_variables_on_the_command_line_win() -> None:
    line = _serve_line("PORT=9002", "HOST=10.0.0.1", MAAS_PORT="9001", MAAS_HOST="0.0.0.0")
    assert "--host 10.0.0.1 --port 9002 " in line
