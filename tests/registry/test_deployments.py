"""Deployment settings per version: defaults, partial changes, validation, epochs, deletes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from maas.config import Settings
from maas.errors import InvalidRequestError, NotFoundError
from maas.registry.deployments import DeploymentSpec
from maas.registry.epochs import REGISTRY, read_all
from maas.registry.store import Registry
from tests.pg import fresh_postgres_url


@pytest.fixture
def two_versions(registry: Registry, hf_dir: Path) -> Registry:
    registry.push(hf_dir, "clf", task="text-classification")
    registry.push(hf_dir, "clf")
    return registry


def test_a_version_without_a_row_has_the_defaults(two_versions: Registry) -> None:
    assert two_versions.get_deployment("clf", 1) == DeploymentSpec(model="clf", version=1)
    assert two_versions.list_deployments() == []


def test_set_records_the_changes_who_and_when_and_keeps_unsent_settings(
    two_versions: Registry,
) -> None:
    first = two_versions.set_deployment("clf", 2, actor="alice", replicas=2, num_cpus=0.5)
    assert (first.replicas, first.num_cpus, first.updated_by) == (2, 0.5, "alice")
    assert first.updated_at is not None and first.updated_at.tzinfo is not None
    second = two_versions.set_deployment("clf", 2, actor="bob", loaded=True, pinned=True)
    assert (second.replicas, second.num_cpus, second.loaded, second.pinned) == (2, 0.5, True, True)
    assert two_versions.get_deployment("clf", 2) == second
    assert two_versions.list_deployments() == [second]


def test_autoscaling_replaces_a_fixed_count_only_when_it_is_cleared(
    two_versions: Registry,
) -> None:
    two_versions.set_deployment("clf", 1, actor=None, replicas=3)
    with pytest.raises(InvalidRequestError) as exc:
        two_versions.set_deployment("clf", 1, actor=None, min_replicas=1, max_replicas=4)
    assert exc.value.param == "replicas"
    spec = two_versions.set_deployment(
        "clf",
        1,
        actor=None,
        replicas=None,
        min_replicas=1,
        max_replicas=4,
        target_ongoing_requests=8,
    )
    assert spec.autoscaling and spec.target_ongoing_requests == 8.0 and spec.replicas is None


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"replica": 2}, "replica"),
        ({"replicas": 0}, "replicas"),
        ({"replicas": True}, "replicas"),
        ({"replicas": 1.5}, "replicas"),
        ({"min_replicas": 3, "max_replicas": 2}, "min_replicas"),
        ({"min_replicas": 2}, "max_replicas"),
        ({"max_replicas": 2}, "min_replicas"),
        ({"target_ongoing_requests": 4}, "target_ongoing_requests"),
        (
            {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 0},
            "target_ongoing_requests",
        ),
        ({"num_cpus": -1}, "num_cpus"),
        ({"num_cpus": float("nan")}, "num_cpus"),
        ({"num_cpus": "2"}, "num_cpus"),
        ({"loaded": "yes"}, "loaded"),
        ({"pinned": None}, "pinned"),
        ({"loaded": False, "pinned": True}, "pinned"),
    ],
)
def test_invalid_settings_are_refused_naming_the_field_and_change_nothing(
    two_versions: Registry, changes: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        two_versions.set_deployment("clf", 1, actor=None, **changes)
    assert exc.value.param == param
    assert two_versions.list_deployments() == []


def test_an_unknown_version_is_not_found(two_versions: Registry) -> None:
    with pytest.raises(NotFoundError):
        two_versions.get_deployment("clf", 9)
    with pytest.raises(NotFoundError):
        two_versions.set_deployment("nope", 1, actor=None, replicas=2)


def test_a_change_bumps_the_registry_epoch_and_runs_this_process_callbacks(
    two_versions: Registry,
) -> None:
    calls: list[str] = []
    two_versions.db.on_commit(REGISTRY, lambda: calls.append("registry"))
    before = read_all(two_versions.db)[REGISTRY]
    two_versions.set_deployment("clf", 1, actor=None, loaded=True)
    assert read_all(two_versions.db)[REGISTRY] == before + 1
    assert calls == ["registry"]


def test_deleting_a_version_or_its_model_deletes_its_row(two_versions: Registry) -> None:
    two_versions.set_deployment("clf", 1, actor=None, pinned=True)
    two_versions.set_deployment("clf", 2, actor=None, replicas=2)
    two_versions.set_alias("clf", "production", 2)
    two_versions.delete_version("clf:1")
    assert [s.ref for s in two_versions.list_deployments()] == ["clf:2"]
    two_versions.delete_alias("clf", "production")
    two_versions.delete_model("clf", force=True)
    assert two_versions.list_deployments() == []


@pytest.fixture
def pg_registry(tmp_path: Path) -> Iterator[Registry]:
    for url in fresh_postgres_url():
        registry = Registry(Settings(home=tmp_path / "pg", database_url=url))
        try:
            yield registry
        finally:
            registry.close()


def test_deployments_round_trip_and_cascade_on_postgres(
    pg_registry: Registry, hf_dir: Path
) -> None:
    pg_registry.push(hf_dir, "clf", task="text-classification")
    pg_registry.push(hf_dir, "clf")
    spec = pg_registry.set_deployment(
        "clf", 2, actor="ci", min_replicas=1, max_replicas=2, num_cpus=1
    )
    assert pg_registry.list_deployments() == [spec]
    assert spec.updated_at is not None and spec.updated_at.tzinfo is not None
    pg_registry.delete_version("clf:2")
    assert pg_registry.list_deployments() == []


def test_a_spec_survives_its_json_round_trip(two_versions: Registry) -> None:
    spec = two_versions.set_deployment("clf", 1, actor="a", loaded=None, num_cpus=2)
    assert DeploymentSpec.from_json(spec.to_json()) == spec
