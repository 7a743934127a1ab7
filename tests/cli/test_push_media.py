"""``maas models push`` on speech and image model directories (local mode)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from maas.cli.main import app
from tests.media_models import built

runner = CliRunner()


@pytest.mark.parametrize(
    ("kind", "task", "fmt"),
    [
        ("whisper", "automatic-speech-recognition", "hf"),
        ("vits", "text-to-speech", "hf"),
        ("diffusion", "text-to-image", "diffusers"),
    ],
)
def test_push_detects_the_task_and_format(
    home: Path, tmp_path_factory: pytest.TempPathFactory, kind: str, task: str, fmt: str
) -> None:
    source = built(kind, tmp_path_factory)
    pushed = runner.invoke(
        app, ["--home", str(home), "models", "push", str(source), "--name", kind]
    )
    assert pushed.exit_code == 0, pushed.stdout + pushed.stderr
    assert pushed.stdout.strip() == f"{kind}:1"
    shown = runner.invoke(app, ["--home", str(home), "models", "versions", kind, "--json"])
    assert shown.exit_code == 0, shown.stdout + shown.stderr
    (version,) = json.loads(shown.stdout)
    assert (version["task"], version["format"]) == (task, fmt)
