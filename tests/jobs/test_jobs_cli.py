"""``maas jobs|datasets|models promote`` and the job commands, in local mode."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from maas.cli.main import app
from maas.config import Settings
from maas.jobs.runner import JobRunner
from maas.registry.store import Registry
from tests.lifecycle import Lifecycle

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


def test_follow_without_a_terminal_prints_a_line_per_event_then_the_job_metrics(
    home: Path, hf_dir: Path
) -> None:
    settings = Settings(home=home)
    registry = Registry(settings)
    try:
        registry.push(hf_dir, "m", task="text-classification")
        spec = {"model": "m:1", "sleep": 0.5, "metrics": {"accuracy": 0.93, "loss": 0.123456}}
        job = JobRunner(registry, settings).submit("selftest", spec)
    finally:
        registry.close()
    code, out, err = maas(home, "jobs", "follow", job.id)  # CliRunner: stderr is no terminal
    assert code == 0, err
    assert out.strip() == "m:2"  # stdout stays the bare reference, for scripts
    lines = [line for line in err.splitlines() if line.startswith(f"selftest {job.id[:8]} step")]
    assert len(lines) >= 2, err
    step, total = lines[-1].rpartition(" ")[2].split("/")
    assert step == total  # the last event: done
    assert "selftest metrics: selftest_files 3  accuracy 0.93  loss 0.1235" in err


def test_job_specs_are_checked_before_the_job_is_queued(home: Path) -> None:
    code, _, err = maas(home, "prune", "--model", "m:1", "--set", "sparsity=0.5")
    assert code == 1
    assert "unknown prune spec key 'sparsity'" in err and "ffn_fraction" in err
    code, _, err = maas(home, "quantize", "--model", "m:1", "--set", "method=dynamic")
    assert code == 1
    assert "method 'dynamic'; expected one of: onnx-int8, onnx-int8-static, torch-int8" in err
    code, _, err = maas(home, "train", "--dataset", "d", "--set", "epoch=2")
    assert code == 1 and "(did you mean 'epochs'?)" in err
    code, out, _ = maas(home, "jobs", "list", "--json")
    assert json.loads(out) == []  # nothing was queued


def test_the_documented_job_examples_are_accepted(home: Path) -> None:
    for args in (
        ["quantize", "--model", "m:1", "--set", "method=onnx-int8"],
        ["prune", "--model", "m:1", "--set", "ffn_fraction=0.5"],
        ["export", "--model", "m:1", "--set", "opset=17"],
    ):
        code, out, err = maas(home, *args, "--detach", "--json")
        assert code == 0, (args, err)
        assert json.loads(out)["status"] == "queued"
    for command, example in (
        ("quantize", "--set method=onnx-int8"),
        ("prune", "--set ffn_fraction=0.5"),
    ):
        assert example in maas(home, command, "--help")[1]
        assert example in maas(home, "--help")[1]
    assert "ffn_fraction: share of FFN neurons" in maas(home, "prune", "--help")[1]


def test_a_refused_promotion_over_url_lists_every_gate_like_local_mode(
    home: Path, hf_dir: Path
) -> None:
    from tests.e2e.conftest import start_server

    registry = Registry(Settings(home=home))
    try:
        registry.push(hf_dir, "m", task="text-classification")
        registry.push(hf_dir, "m", metrics={"accuracy": 0.85})
    finally:
        registry.close()
    servers = start_server(home)
    live = next(servers)
    try:
        result = runner.invoke(
            app,
            ["--url", live.url, "--api-key", live.key, "models", "promote", "m:2",
             "--require", "accuracy>=0.9", "--require", "accuracy>0"],
        )  # fmt: skip
    finally:
        servers.close()
    assert result.exit_code == 1
    assert "FAIL accuracy>=0.9 (is 0.85)" in result.stderr
    assert "pass accuracy>0 (is 0.85)" in result.stderr
    assert "m:2 was not promoted to production" in result.stderr


@pytest.mark.slow
def test_the_documented_walkthrough_chains_and_prints_metrics(
    reviews_lifecycle: Lifecycle,
) -> None:
    """``maas models push``, ``datasets add``, ``train --follow`` and ``evaluate`` in local
    mode, run once for the session by ``reviews_lifecycle`` (tests/lifecycle.py; the API
    lifecycle test goes on from the same trained version): what they printed, and what
    ``models show`` finds after them."""
    train, evaluate = reviews_lifecycle.train, reviews_lifecycle.evaluate
    assert train.code == 0, train.stderr
    assert train.stdout.strip() == "sentiment:1"
    assert re.search(r"^train [0-9a-f]{8} step \d+/\d+ loss=", train.stderr, re.M), train.stderr
    assert re.search(r"^train metrics: .*\baccuracy \d", train.stderr, re.M), train.stderr
    assert evaluate.code == 0, evaluate.stderr
    assert evaluate.stdout.strip() == "sentiment:1"
    metrics_line = r"^evaluate metrics: accuracy \S+  macro_f1 \S+ .*latency_ms_bs1"
    assert re.search(metrics_line, evaluate.stderr, re.M), evaluate.stderr
    code, out, err = maas(reviews_lifecycle.home, "models", "show", "sentiment", "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["model"]["aliases"] == {"production": 1}
    assert shown["version"]["version"] == 1 and "accuracy" in shown["version"]["metrics"]
