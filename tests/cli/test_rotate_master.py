"""``maas keys rotate-master``: re-wrap every blob's data key under a new master key."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

from typer.testing import CliRunner

from maas.cli.main import app

runner = CliRunner()

OLD_KEY = base64.b64encode(bytes(range(32))).decode()
NEW_KEY = bytes(range(100, 132)).hex()


def maas(home: Path, *args: str, env: dict[str, str | None]) -> tuple[int, str, str]:
    base: dict[str, str | None] = {"MAAS_MASTER_KEY": None, "MAAS_MASTER_KEY_FILE": None}
    result = runner.invoke(app, ["--home", str(home), *args], env={**base, **env})
    return result.exit_code, result.stdout, result.stderr


def test_rotate_master_rewraps_every_blob_and_only_the_new_key_reads_them(
    home: Path, hf_dir: Path, tmp_path: Path
) -> None:
    old = {"MAAS_MASTER_KEY": OLD_KEY}
    push = ["models", "push", str(hf_dir), "--name", "m", "--task", "text-classification"]
    assert maas(home, *push, env=old)[0] == 0
    new_key_file = tmp_path / "new.key"
    new_key_file.write_text(NEW_KEY + "\n")

    code, out, err = maas(
        home, "keys", "rotate-master", "--new-key-file", str(new_key_file), env=old
    )
    assert code == 0, err
    assert out.strip() == "re-wrapped 3 blob(s)"
    assert "MAAS_MASTER_KEY_FILE" in err

    new = {"MAAS_MASTER_KEY_FILE": str(new_key_file)}
    code, _, err = maas(home, "models", "pull", "m", str(tmp_path / "out"), env=new)
    assert code == 0, err
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (
        hf_dir / "model.safetensors"
    ).read_bytes()

    # Materialized versions are plaintext copies (docs/encryption.md); drop them so the
    # next pull has to read the blobs.
    shutil.rmtree(home / "cache")
    code, out, err = maas(home, "models", "pull", "m", str(tmp_path / "refused"), env=old)
    assert code == 1
    assert "wrong master key" in err
    assert "Traceback" not in out + err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "refused").exists()

    # Run again with the old key (say, after an interruption): nothing left to do.
    code, out, _ = maas(home, "keys", "rotate-master", "--new-key-file", str(new_key_file), env=old)
    assert code == 0
    assert out.strip() == "re-wrapped 0 blob(s)"


def test_rotate_master_needs_a_current_key_and_a_valid_new_one(home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("not a key")
    args = ["keys", "rotate-master", "--new-key-file", str(bad)]

    code, _, err = maas(home, *args, env={})
    assert code == 1
    assert "no current master key" in err

    code, _, err = maas(home, *args, env={"MAAS_MASTER_KEY": OLD_KEY})
    assert code == 1
    assert "must be 32 random bytes" in err
    assert "not a key" not in err
    assert len(err.strip().splitlines()) == 1

    code, _, err = maas(
        home,
        "keys",
        "rotate-master",
        "--new-key-file",
        str(tmp_path / "missing.key"),
        env={"MAAS_MASTER_KEY": OLD_KEY},
    )
    assert code == 1
    assert "missing.key" in err
