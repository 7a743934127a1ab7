"""The pipeline job in a real subprocess: newest dataset → train from production →
evaluate → gates → canary rollout; a failing gate stops it before any rollout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from maas.config import Settings
from maas.jobs.runner import JobRunner
from maas.registry import rollouts
from maas.registry.formats import DATASET_TASK
from maas.registry.store import Registry

pytestmark = pytest.mark.slow

TRAIN = {"epochs": 1, "batch_size": 16, "learning_rate": 3e-3, "max_length": 16}


@pytest.fixture
def prepared(
    registry: Registry, tiny_bert_dir: Path, sentiment_dataset: Path, skewed_dataset: Path
) -> Registry:
    registry.push(tiny_bert_dir, "clf", task="text-classification")  # 1: production
    registry.push(skewed_dataset, "sentiment", task=DATASET_TASK)  # 1: an older dataset
    registry.push(sentiment_dataset, "sentiment", task=DATASET_TASK)  # 2: the newest
    return registry


def run_pipeline(registry: Registry, settings: Settings, spec: dict[str, Any]) -> Any:
    runner = JobRunner(registry, settings, poll_interval=0.05)
    try:
        job = runner.submit("pipeline", spec, created_by="schedule:test")
        return runner.wait(job.id, timeout=240)
    finally:
        runner.shutdown()


def test_a_pipeline_trains_on_the_newest_data_and_starts_a_canary(
    prepared: Registry, settings: Settings
) -> None:
    spec = {
        "model": "clf",
        "dataset": "sentiment",
        **TRAIN,
        "slice_column": "domain",
        "gates": ["accuracy>=0", "slice_gap<=1"],
        "rollout": {"steps": [10, 100], "step_seconds": 60},
    }
    info = run_pipeline(prepared, settings, spec)
    assert info.status == "succeeded", info.error
    assert info.result_ref == "clf:2"
    candidate = prepared.get_version("clf:2")
    assert candidate.parent == "clf:1" and candidate.job_id == info.id
    assert candidate.params["dataset"] == "sentiment:2"  # the newest version
    assert "accuracy" in candidate.metrics and "slice_gap" in candidate.metrics
    assert prepared.list_aliases("clf")["production"] == 1  # not promoted: rolled out
    [rollout] = rollouts.list_rollouts(prepared.db, "clf")
    assert (rollout.state, rollout.candidate, rollout.baseline) == ("running", 2, 1)
    assert rollout.origin == f"job:{info.id}" and rollout.created_by == "schedule:test"
    policy = prepared.get_routing("clf")
    assert policy is not None and dict(policy.split) == {"2": 10, "1": 90}


def test_a_failing_gate_stops_the_pipeline_before_any_rollout(
    prepared: Registry, settings: Settings
) -> None:
    spec = {"model": "clf", "dataset": "sentiment:2", **TRAIN, "gates": ["accuracy>=1.01"]}
    info = run_pipeline(prepared, settings, spec)
    assert info.status == "failed"
    assert "promotion gates failed for clf:2: accuracy>=1.01" in (info.error or "")
    assert prepared.get_version("clf:2").params["dataset"] == "sentiment:2"
    assert rollouts.list_rollouts(prepared.db, "clf") == []
    assert prepared.get_routing("clf") is None
