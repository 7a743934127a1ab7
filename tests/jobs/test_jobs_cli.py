"""``maas jobs|datasets|models promote`` and the job commands, in local mode."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from maas.cli.main import app
from maas.config import Settings
from maas.jobs.runner import JobRunner
from maas.registry.store import Registry

runner = CliRunner()


def maas(home: Path, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--home", str(home), *args])
    return result.exit_code, result.stdout, result.stderr


def test_datasets_add_list_and_show(home: Path, tmp_path: Path) -> None:
    source = tmp_path / "r.csv"
    source.write_text("t,y\n" + "".join(f"text {i},{i % 2}\n" for i in range(20)) + "text 1,1\n")
    code, out, err = maas(
        home,
        "datasets", "add", str(source), "--name", "reviews", "--text-column", "t",
        "--label-column", "y", "--label-map", '{"0": "neg", "1": "pos"}', "--splits", "0.5,0.5,0",
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == "reviews:1"
    assert "duplicates 1" in err
    code, out, _ = maas(home, "datasets", "list", "--json")
    assert [d["ref"] for d in json.loads(out)] == ["reviews:1"]
    code, out, _ = maas(home, "datasets", "show", "reviews", "--json")
    assert json.loads(out)["splits"] == {"train": 10, "validation": 10, "test": 0}
    code, _, err = maas(home, "datasets", "add", str(tmp_path / "missing.csv"), "--name", "x")
    assert code == 1 and "does not exist" in err


def test_jobs_follow_runs_a_queued_job_and_list_show_logs_report_it(
    home: Path, hf_dir: Path
) -> None:
    settings = Settings(home=home)
    registry = Registry(settings)
    try:
        registry.push(hf_dir, "m", task="text-classification")
        job = JobRunner(registry, settings).submit("selftest", {"model": "m:1"})
    finally:
        registry.close()
    code, out, err = maas(home, "jobs", "follow", job.id)
    assert code == 0, err
    assert out.strip() == "m:2"
    code, out, _ = maas(home, "jobs", "list", "--json")
    assert [(j["id"], j["status"]) for j in json.loads(out)] == [(job.id, "succeeded")]
    code, out, _ = maas(home, "jobs", "show", job.id)
    assert code == 0 and "result: m:2" in out
    code, out, _ = maas(home, "jobs", "logs", job.id)
    assert code == 0 and "created m:2" in out
    code, _, err = maas(home, "jobs", "cancel", job.id)
    assert code == 1 and "already succeeded" in err


def test_a_detached_job_stays_queued_until_cancelled(home: Path) -> None:
    code, out, err = maas(
        home, "evaluate", "--model", "m:1", "--dataset", "reviews", "--set", "batch_size=8",
        "--detach", "--json",
    )  # fmt: skip
    assert code == 0, err
    job = json.loads(out)
    assert job["kind"] == "evaluate" and job["status"] == "queued"
    assert job["spec"] == {"model": "m:1", "dataset": "reviews", "batch_size": 8}
    code, out, _ = maas(home, "jobs", "cancel", job["id"])
    assert code == 0 and "cancelled" in out


def test_models_promote_exits_1_listing_the_failing_gates(home: Path, hf_dir: Path) -> None:
    registry = Registry(Settings(home=home))
    try:
        registry.push(hf_dir, "m", task="text-classification", metrics={"accuracy": 0.85})
    finally:
        registry.close()
    code, out, err = maas(
        home, "models", "promote", "m:1", "--require", "accuracy>=0.9", "--require", "accuracy>0"
    )
    assert code == 1
    assert "FAIL accuracy>=0.9 (is 0.85)" in err and "pass accuracy>0" in err
    code, out, err = maas(home, "models", "promote", "m:1", "--require", "accuracy>=0.8")
    assert code == 0, err
    assert out.strip() == "m@production → m:1"
    code, _, err = maas(home, "models", "promote", "m:1", "--require", "recall>=0.8")
    assert code == 1 and "no metric 'recall'" in err
