"""What a version's deployment settings ask of Ray Serve, and how its application is named."""

from __future__ import annotations

from pathlib import Path

from maas.config import Settings
from maas.registry.deployments import DeploymentSpec
from maas.registry.schemas import VersionInfo
from maas.serving.ray_apps import app_name, plan, version_prefix
from maas.serving.ray_replica import replica_settings


def _version(model: str = "m", number: int = 1) -> VersionInfo:
    return VersionInfo.model_validate(
        {
            "model": model,
            "version": number,
            "task": "embeddings",
            "format": "hf",
            "digest": "sha256:" + "ab" * 32,
            "size_bytes": 1,
            "status": "ready",
            "description": "",
            "metadata": {},
            "metrics": {},
            "params": {},
            "tags": {},
            "parent": None,
            "job_id": None,
            "aliases": [],
            "created_at": "2026-01-01T00:00:00Z",
            "created_by": None,
        }
    )


def test_a_version_without_settings_gets_one_replica_of_one_cpu(tmp_path: Path) -> None:
    options = plan(DeploymentSpec("m", 1), Settings(home=tmp_path)).options
    assert options["num_replicas"] == 1
    assert options["ray_actor_options"] == {"num_cpus": 1.0}
    assert options["max_ongoing_requests"] == 64  # not Ray's 5: replicas batch what they hold
    assert "autoscaling_config" not in options


def test_autoscaling_settings_become_an_autoscaling_config(tmp_path: Path) -> None:
    spec = DeploymentSpec(
        "m", 1, min_replicas=1, max_replicas=4, target_ongoing_requests=8, num_cpus=0.5
    )
    settings = Settings(home=tmp_path, ray_autoscaling={"upscale_delay_s": 5})
    options = plan(spec, settings).options
    assert options["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 8,
        "upscale_delay_s": 5,
    }
    assert "num_replicas" not in options
    assert options["ray_actor_options"] == {"num_cpus": 0.5}


def test_the_application_name_changes_with_the_settings_only(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    one, two = (
        plan(DeploymentSpec("m", 1), settings),
        plan(DeploymentSpec("m", 1, replicas=2), settings),
    )
    assert plan(DeploymentSpec("m", 1, replicas=1), settings).fingerprint == one.fingerprint
    assert app_name(_version(), one) != app_name(_version(), two)
    assert app_name(_version(), one).startswith(version_prefix(_version()))
    assert version_prefix(_version()) == "maas:m:1:" + "ab" * 6 + ":"
    # Another version's prefix never matches this one's applications.
    assert not app_name(_version("m", 11), one).startswith(version_prefix(_version()))


def test_a_replica_runs_as_many_torch_threads_as_its_cpus(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, ray_address="auto")
    assert replica_settings(settings, 0.25).torch_threads == 1
    assert replica_settings(settings, 2.0).torch_threads == 2
    assert replica_settings(settings, 2.0).ray_address is None  # a replica never deploys
    fixed = Settings(home=tmp_path, torch_threads=3)
    assert replica_settings(fixed, 1.0).torch_threads == 3
