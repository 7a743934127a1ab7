"""The CLI in local mode, through typer's runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from maas.cli.main import app
from maas.config import Settings
from maas.registry.store import Registry

runner = CliRunner()


def maas(home: Path, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--home", str(home), *args])
    return result.exit_code, result.stdout, result.stderr


def test_push_prints_the_reference(home: Path, hf_dir: Path) -> None:
    code, out, _ = maas(
        home, "models", "push", str(hf_dir), "--name", "sentiment", "--task", "text-classification"
    )
    assert code == 0
    assert out.strip() == "sentiment:1"
    code, out, _ = maas(home, "models", "push", str(hf_dir), "--name", "sentiment")
    assert out.strip() == "sentiment:2"


def test_list_show_versions_and_json_output(home: Path, hf_dir: Path) -> None:
    maas(
        home, "models", "push", str(hf_dir), "--name", "sentiment", "--task", "text-classification"
    )
    code, out, _ = maas(home, "models", "list")
    assert code == 0 and "sentiment" in out and "text-classification" in out
    code, out, _ = maas(home, "models", "show", "sentiment")
    assert code == 0 and "sentiment:1" in out and "model.safetensors" in out
    code, out, _ = maas(home, "models", "versions", "sentiment", "--json")
    data = json.loads(out)
    assert [v["version"] for v in data] == [1]
    assert data[0]["digest"].startswith("sha256:")


def test_alias_rollback_history_archive_delete_gc(home: Path, hf_dir: Path) -> None:
    for _ in range(3):
        maas(home, "models", "push", str(hf_dir), "--name", "m", "--task", "text-classification")
    assert maas(home, "models", "alias", "m", "production", "3")[1].strip() == "m@production → m:3"
    maas(home, "models", "alias", "m", "production", "2", "--reason", "regression in 3")
    code, out, _ = maas(home, "models", "rollback", "m", "production")
    assert code == 0 and out.strip() == "m@production → m:3"
    code, out, _ = maas(home, "models", "history", "m", "production", "--json")
    assert [(e["from_version"], e["to_version"]) for e in json.loads(out)] == [
        (None, 1),  # the first version's production alias
        (1, 3),
        (3, 2),
        (2, 3),
    ]
    assert maas(home, "models", "archive", "m:1")[0] == 0
    assert maas(home, "models", "restore", "m:1")[0] == 0
    assert maas(home, "models", "delete", "m:1")[1].strip() == "deleted m:1"
    code, out, _ = maas(home, "models", "gc", "--grace-seconds", "0")
    assert code == 0 and "removed 0 blob(s)" in out


def test_pull_writes_identical_files(home: Path, hf_dir: Path, tmp_path: Path) -> None:
    maas(home, "models", "push", str(hf_dir), "--name", "m", "--task", "text-classification")
    code, _, _ = maas(home, "models", "pull", "m", str(tmp_path / "out"))
    assert code == 0
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (
        hf_dir / "model.safetensors"
    ).read_bytes()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["models", "show", "missing"], "model 'missing' not found"),
        (["models", "push", "/no/such/dir", "--name", "x"], "does not exist"),
        (["models", "alias", "Bad", "production", "1"], "invalid model name"),
        (["models", "rollback", "missing", "production"], "not found"),
        (["models", "delete", "m@production"], "not an alias"),
    ],
)
def test_errors_are_one_line_with_nonzero_exit(home: Path, args: list[str], message: str) -> None:
    code, out, err = maas(home, *args)
    assert code != 0
    assert message in err
    assert "Traceback" not in err + out
    assert len(err.strip().splitlines()) == 1


def test_pickle_push_is_refused(home: Path, hf_dir: Path) -> None:
    (hf_dir / "pytorch_model.bin").write_bytes(b"\x80\x04.")
    code, _, err = maas(home, "models", "push", str(hf_dir), "--name", "x")
    assert code == 1
    assert "pickle" in err


def test_keys_create_list_revoke(home: Path) -> None:
    code, out, _ = maas(home, "keys", "create", "--name", "ci", "--scope", "infer")
    assert code == 0 and out.strip().startswith("maas-sk-")
    code, out, _ = maas(home, "keys", "list", "--json")
    keys = json.loads(out)
    assert keys[0]["name"] == "ci" and "key_hash" not in keys[0]
    assert maas(home, "keys", "revoke", str(keys[0]["id"]))[0] == 0


def test_default_model_registration_is_idempotent(home: Path, minilm_dir: Path) -> None:
    from maas.cli.main import ensure_default_model

    reg = Registry(Settings(home=home))
    try:
        # chat=False: the SmolLM2 conversion (~20 s) is covered, marked slow, in
        # tests/registry/test_gguf.py.
        assert ensure_default_model(reg, chat=False) == "minilm:1"
        assert ensure_default_model(reg, chat=False) == "minilm:1"
        assert reg.resolve("minilm@production").task == "embeddings"
    finally:
        reg.close()


def test_keys_create_with_a_policy_update_rotate_and_usage(settings: Settings) -> None:
    from maas.security.keys import KeyStore

    env = {"MAAS_HOME": str(settings.home)}
    r = runner.invoke(
        app,
        [
            "keys",
            "create",
            "-n",
            "team-a",
            "-s",
            "infer",
            "-m",
            "team-a-*",
            "--rpm",
            "60",
            "--monthly-tokens",
            "1000",
            "--expires",
            "2099-01-01T00:00:00",
        ],
        env=env,
    )
    assert r.exit_code == 0, r.output
    registry = Registry(settings)
    try:
        (info,) = [k for k in KeyStore(registry.db).list() if k.name == "team-a"]
    finally:
        registry.close()
    assert info.models == ["team-a-*"]
    assert info.rpm_limit == 60
    assert info.monthly_token_quota == 1000
    assert info.expires_at is not None and info.expires_at.year == 2099
    r = runner.invoke(app, ["keys", "update", str(info.id), "--rpm", "120"], env=env)
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["keys", "rotate", str(info.id)], env=env)
    assert r.exit_code == 0, r.output
    assert r.stdout.strip().startswith("maas-sk-")
    r = runner.invoke(app, ["keys", "create", "-n", "bad", "-s", "root"], env=env)
    assert r.exit_code != 0
    assert "unknown scope" in r.output
    r = runner.invoke(app, ["usage", "--group-by", "model", "--json"], env=env)
    assert r.exit_code == 0, r.output
    assert '"group_by": "model"' in r.stdout


def test_keys_list_and_show_give_the_allowlist_and_limits(home: Path) -> None:
    code, _, err = maas(
        home, "keys", "create", "-n", "team-a", "-s", "infer", "-m", "team-a-*", "-m", "minilm",
        "--rpm", "60", "--tpm", "5000", "--monthly-requests", "900",
    )  # fmt: skip
    assert code == 0, err
    code, out, _ = maas(home, "keys", "list")
    assert code == 0
    header, *rows = [line for line in out.splitlines() if line.strip()]
    for column in ("models", "rpm", "tpm", "monthly"):
        assert column in header
    (row,) = [r for r in rows if "team-a " in r or r.split()[1:2] == ["team-a"]]
    assert "team-a-*,minilm" in row and " 60 " in row and "5000" in row and "900 req" in row
    key_id = row.split()[0]
    code, out, _ = maas(home, "keys", "show", key_id)
    assert code == 0
    assert "models: team-a-*, minilm" in out
    assert "requests per minute: 60" in out and "tokens per minute: 5000" in out
    assert "monthly requests: 900" in out and "monthly tokens: none" in out
    assert json.loads(maas(home, "keys", "show", key_id, "--json")[1])["rpm_limit"] == 60
    code, _, err = maas(home, "keys", "show", "999")
    assert code == 1 and "key 999 not found" in err


def test_usage_by_key_shows_the_key_names(settings: Settings) -> None:
    from datetime import UTC, datetime

    from maas.registry.models import UsageRow
    from maas.security.keys import KeyPolicy, KeyStore

    registry = Registry(settings)
    try:
        info, _ = KeyStore(registry.db).create("ci-bot", None, KeyPolicy())
        with registry.db.write() as s:
            for key_id in (info.id, info.id, None):
                s.add(
                    UsageRow(
                        ts=datetime.now(UTC), key_id=key_id, model="minilm", version=1,
                        route="embeddings", status=200, prompt_tokens=3,
                    )
                )  # fmt: skip
    finally:
        registry.close()
    code, out, _ = maas(settings.home, "usage", "--group-by", "key")
    assert code == 0
    assert f"{info.id} (ci-bot)" in out and "no key" in out
    data = json.loads(maas(settings.home, "usage", "--group-by", "key", "--json")[1])["data"]
    assert [(row["key"], row["key_name"], row["requests"]) for row in data] == [
        (info.id, "ci-bot", 2),
        (None, None, 1),
    ]
