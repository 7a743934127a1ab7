"""An encrypted store is marked so in the database; a process without the master key
then refuses to write blobs into it (registry, CLI and server), and still reads
the plaintext ones."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from maas import crypto
from maas.api.app import create_app
from maas.cli.main import app
from maas.config import Settings
from maas.registry.blobmarker import MasterKeyRequiredError, encryption_mark
from maas.registry.store import Registry
from tests.helpers import blob_count, tar_of_dir

KEY = bytes(range(32))


@pytest.fixture
def marked_home(home: Path, hf_dir: Path) -> Iterator[Path]:
    """A store with one plaintext version (``plain``), then opened once with a master key."""
    plain = Registry(Settings(home=home))
    plain.push(hf_dir, "plain", task="text-classification")
    plain.close()
    keyed = Registry(Settings(home=home, master_key=KEY.hex()))
    keyed.close()
    yield home


def test_opening_the_registry_with_a_master_key_marks_the_store(home: Path) -> None:
    reg = Registry(Settings(home=home))
    assert encryption_mark(reg.db) is None
    reg.close()
    keyed = Registry(Settings(home=home, master_key=KEY.hex()))
    try:
        assert encryption_mark(keyed.db) == crypto.key_id(KEY)
    finally:
        keyed.close()


def test_a_registry_without_the_key_refuses_to_write_and_stores_nothing(
    marked_home: Path, tmp_path: Path
) -> None:
    reg = Registry(Settings(home=marked_home))
    try:
        blobs = blob_count(marked_home)
        with pytest.raises(MasterKeyRequiredError, match="MAAS_MASTER_KEY_FILE") as caught:
            reg.push(tmp_path / "hf-model", "other", task="text-classification")
        assert crypto.key_id(KEY) in caught.value.message
        assert blob_count(marked_home) == blobs
        assert [m.name for m in reg.list_models()] == ["plain"]
    finally:
        reg.close()


def test_a_registry_without_the_key_still_reads_plaintext_blobs(
    marked_home: Path, hf_dir: Path
) -> None:
    reg = Registry(Settings(home=marked_home))
    try:
        out = reg.materialize("plain")
        assert (out / "config.json").read_bytes() == (hf_dir / "config.json").read_bytes()
        assert reg.check_consistency(deep=True) == []
    finally:
        reg.close()


def test_with_the_key_writes_go_on_encrypted(marked_home: Path, hf_dir: Path) -> None:
    reg = Registry(Settings(home=marked_home, master_key=KEY.hex()))
    try:
        info = reg.push(hf_dir, "again", task="text-classification")
        assert all(
            crypto.looks_encrypted(reg.artifacts.blob_path(f.sha256)) for f in info.files or []
        )
    finally:
        reg.close()


def test_the_cli_without_the_key_refuses_to_push_but_pulls_plaintext(
    marked_home: Path, hf_dir: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    pushed = runner.invoke(
        app, ["--home", str(marked_home), "models", "push", str(hf_dir), "--name", "x"]
    )
    assert pushed.exit_code == 1
    assert "encrypted" in pushed.stderr and "MAAS_MASTER_KEY" in pushed.stderr
    assert "Traceback" not in pushed.stderr
    pulled = runner.invoke(
        app, ["--home", str(marked_home), "models", "pull", "plain", str(tmp_path / "out")]
    )
    assert pulled.exit_code == 0, pulled.stderr
    assert (tmp_path / "out" / "config.json").is_file()


def test_the_cli_with_the_key_in_its_environment_pushes(
    marked_home: Path, hf_dir: Path, tmp_path: Path
) -> None:
    key_file = tmp_path / "master.key"
    key_file.write_text(KEY.hex())
    result = CliRunner().invoke(
        app,
        ["--home", str(marked_home), "models", "push", str(hf_dir), "--name", "x"],
        env={"MAAS_MASTER_KEY_FILE": str(key_file)},
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "x:1"


def test_a_server_without_the_key_answers_uploads_with_503_and_serves_downloads(
    marked_home: Path, hf_dir: Path, tmp_path: Path
) -> None:
    with TestClient(create_app(Settings(home=marked_home))) as client:
        auth = {"Authorization": f"Bearer {(marked_home / 'admin.key').read_text().strip()}"}
        r = client.post(
            "/admin/v1/models/x/versions",
            params={"task": "text-classification"},
            content=tar_of_dir(hf_dir),
            headers={**auth, "Content-Type": "application/x-tar"},
        )
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "master_key_required"
        assert "MAAS_MASTER_KEY" in r.json()["error"]["message"]
        d = client.get("/admin/v1/models/plain/versions/1/download", headers=auth)
        assert d.status_code == 200
        archive = tmp_path / "plain.tar"
        archive.write_bytes(d.content)
        with tarfile.open(archive) as tar:
            assert "config.json" in tar.getnames()
