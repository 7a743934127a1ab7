"""``maas models deploy``: show and change a version's deployment settings (local mode)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from maas.cli.main import app

runner = CliRunner()


def maas(home: Path, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--home", str(home), *args])
    return result.exit_code, result.stdout, result.stderr


def pushed(home: Path, hf_dir: Path) -> Path:
    code, _, err = maas(
        home, "models", "push", str(hf_dir), "--name", "clf", "--task", "text-classification"
    )
    assert code == 0, err
    return home


def test_without_options_it_shows_the_defaults(home: Path, hf_dir: Path) -> None:
    code, out, _ = maas(pushed(home, hf_dir), "models", "deploy", "clf:1")
    assert code == 0
    assert "clf:1" in out and "on demand" in out and "replicas: 1" in out


def test_options_change_the_settings_and_json_shows_them(home: Path, hf_dir: Path) -> None:
    pushed(home, hf_dir)
    code, out, err = maas(home, "models", "deploy", "clf:1", "--replicas", "2", "--cpus", "0.5")
    assert code == 0, err
    assert "replicas: 2" in out and "cpus per replica: 0.5" in out and "local:" in out
    code, out, err = maas(
        home,
        "models",
        "deploy",
        "clf@production",
        "--min-replicas",
        "1",
        "--max-replicas",
        "3",
        "--target-ongoing-requests",
        "4",
        "--load",
        "--pin",
        "--json",
    )
    assert code == 0, err
    spec = json.loads(out)
    assert spec["replicas"] is None  # autoscaling replaced the fixed count
    assert (spec["min_replicas"], spec["max_replicas"], spec["target_ongoing_requests"]) == (
        1,
        3,
        4.0,
    )
    assert (spec["loaded"], spec["pinned"], spec["num_cpus"]) == (True, True, 0.5)
    code, out, _ = maas(home, "models", "deploy", "clf:1", "--replicas", "1")
    assert code == 0 and "replicas: 1" in out and "autoscaling" not in out
    code, out, _ = maas(home, "models", "deploy", "clf:1", "--unload", "--json")
    assert (json.loads(out)["loaded"], json.loads(out)["pinned"]) == (False, False)


def test_invalid_settings_fail_with_one_line_naming_the_problem(home: Path, hf_dir: Path) -> None:
    pushed(home, hf_dir)
    code, _, err = maas(home, "models", "deploy", "clf:1", "--min-replicas", "2")
    assert code == 1 and "max_replicas" in err and "Traceback" not in err
    code, _, err = maas(home, "models", "deploy", "clf:1", "--replicas", "0")
    assert code == 1 and "replicas" in err
    code, _, err = maas(home, "models", "deploy", "clf:9")
    assert code == 1 and "not found" in err
