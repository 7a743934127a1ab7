"""A real `maas serve` process on a real socket, driven by the CLI's remote mode and the SDK."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from maas.cli.main import app
from maas.client import MaasClient
from maas.errors import NotFoundError, UnauthorizedError, UnsafeFormatError
from tests.e2e.conftest import free_port
from tests.helpers import make_hf_dir, make_onnx_file


def test_cli_remote_mode_pushes_and_resolves(server: tuple[str, str], tmp_path: Path) -> None:
    url, key = server
    model = make_hf_dir(tmp_path / "m")
    runner = CliRunner()
    base = ["--url", url, "--api-key", key]
    r = runner.invoke(
        app,
        [*base, "models", "push", str(model), "--name", "remote", "--task", "text-classification"],
    )
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == "remote:1"
    r = runner.invoke(app, [*base, "models", "alias", "remote", "production", "1"])
    assert r.exit_code == 0
    r = runner.invoke(app, [*base, "models", "show", "remote"])
    assert "remote:1" in r.stdout and "production" in r.stdout
    r = runner.invoke(app, ["--url", url, "--api-key", "maas-sk-bad", "models", "list"])
    assert r.exit_code == 1 and "invalid API key" in r.stderr


def test_sdk_round_trips_onnx_and_maps_errors(server: tuple[str, str], tmp_path: Path) -> None:
    url, key = server
    onnx_path = make_onnx_file(tmp_path / "affine.onnx")
    with MaasClient(url, key) as client:
        info = client.push(onnx_path, "affine")
        assert info.format == "onnx"
        got = client.download("affine:1", tmp_path / "pulled")
        assert got.digest == info.digest
        assert (tmp_path / "pulled" / "affine.onnx").read_bytes() == onnx_path.read_bytes()
        with pytest.raises(NotFoundError):
            client.get_version("affine:9")
        bad = make_hf_dir(tmp_path / "pickled")
        (bad / "pytorch_model.bin").write_bytes(b"\x80")
        with pytest.raises(UnsafeFormatError):
            client.push(bad, "pickled", task="text-classification")
    with MaasClient(url, None) as anonymous, pytest.raises(UnauthorizedError):
        anonymous.list_models()


def test_cli_reports_unreachable_server_in_one_line() -> None:
    r = CliRunner().invoke(app, ["--url", f"http://127.0.0.1:{free_port()}", "models", "list"])
    assert r.exit_code == 1
    assert "cannot reach the server" in r.stderr
