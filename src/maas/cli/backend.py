"""One interface for the CLI over two transports: the local registry or a server."""

from __future__ import annotations

import getpass
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from maas.client.sync import MaasClient
from maas.config import Settings
from maas.jobs import schedules
from maas.jobs.runner import JobRunner
from maas.jobs.scheduler import run_now
from maas.registry import rollouts, routing
from maas.registry.deployments import DeploymentSpec
from maas.registry.refs import ModelRef
from maas.registry.schemas import AliasEvent, GcResult, ModelInfo, VersionInfo
from maas.registry.store import Registry


class Backend(Protocol):
    def list_models(self, *, task: str | None = None) -> list[ModelInfo]: ...
    def get_model(self, name: str) -> ModelInfo: ...
    def delete_model(self, name: str, *, force: bool = False) -> None: ...
    def list_versions(self, name: str) -> list[VersionInfo]: ...
    def get_version(self, ref: str, *, with_files: bool = False) -> VersionInfo: ...
    def push(
        self,
        source: Path,
        name: str,
        *,
        task: str | None = None,
        description: str = "",
        parent: str | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> VersionInfo: ...
    def upload_size(self, source: Path) -> int: ...
    def download(self, ref: str, dest: Path) -> VersionInfo: ...
    def archive(self, ref: str) -> VersionInfo: ...
    def restore(self, ref: str) -> VersionInfo: ...
    def delete_version(self, ref: str) -> None: ...
    def set_alias(
        self, name: str, alias: str, version: int, *, reason: str = ""
    ) -> VersionInfo: ...
    def delete_alias(self, name: str, alias: str) -> None: ...
    def alias_history(self, name: str, alias: str | None = None) -> list[AliasEvent]: ...
    def rollback(self, name: str, alias: str) -> VersionInfo: ...
    def gc(self, *, grace_seconds: int | None = None) -> GcResult: ...
    def get_deployment(self, ref: str) -> DeploymentSpec: ...
    def set_deployment(self, ref: str, **changes: Any) -> DeploymentSpec: ...
    def get_routing(self, name: str) -> dict[str, Any] | None: ...
    def set_routing(self, name: str, policy: dict[str, Any]) -> dict[str, Any]: ...
    def clear_routing(self, name: str) -> None: ...
    def start_rollout(self, name: str, plan: dict[str, Any]) -> dict[str, Any]: ...
    def list_rollouts(self, name: str) -> list[dict[str, Any]]: ...
    def get_rollout(self, name: str, rollout_id: int) -> dict[str, Any]: ...
    def cancel_rollout(self, name: str, rollout_id: int) -> dict[str, Any]: ...
    def create_schedule(self, body: dict[str, Any]) -> dict[str, Any]: ...
    def list_schedules(self) -> list[dict[str, Any]]: ...
    def get_schedule(self, name: str) -> dict[str, Any]: ...
    def update_schedule(self, name: str, changes: dict[str, Any]) -> dict[str, Any]: ...
    def delete_schedule(self, name: str) -> None: ...
    def run_schedule(self, name: str) -> dict[str, Any]: ...
    def close(self) -> None: ...


class LocalBackend:
    """Works on ``MAAS_HOME`` directly: no server needed."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = Registry(settings)
        self.actor = f"local:{getpass.getuser()}"

    def close(self) -> None:
        self.registry.close()

    def list_models(self, *, task: str | None = None) -> list[ModelInfo]:
        return self.registry.list_models(task=task)

    def get_model(self, name: str) -> ModelInfo:
        return self.registry.get_model(name)

    def delete_model(self, name: str, *, force: bool = False) -> None:
        self.registry.delete_model(name, force=force)

    def list_versions(self, name: str) -> list[VersionInfo]:
        return self.registry.list_versions(name)

    def get_version(self, ref: str, *, with_files: bool = False) -> VersionInfo:
        return self.registry.get_version(ref, with_files=with_files)

    def push(
        self,
        source: Path,
        name: str,
        *,
        task: str | None = None,
        description: str = "",
        parent: str | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> VersionInfo:
        return self.registry.push(
            source,
            name,
            task=task,
            description=description,
            parent=parent,
            created_by=self.actor,
            on_bytes=on_bytes,
        )

    def upload_size(self, source: Path) -> int:
        if source.is_file():
            return source.stat().st_size
        return sum(p.stat().st_size for p in source.rglob("*") if p.is_file())

    def download(self, ref: str, dest: Path) -> VersionInfo:
        info = self.registry.get_version(ref)
        cached = self.registry.materialize(ModelRef.parse(info.ref))
        shutil.copytree(cached, dest, dirs_exist_ok=True)
        return info

    def archive(self, ref: str) -> VersionInfo:
        return self.registry.archive_version(ref)

    def restore(self, ref: str) -> VersionInfo:
        return self.registry.restore_version(ref)

    def delete_version(self, ref: str) -> None:
        self.registry.delete_version(ref)

    def set_alias(self, name: str, alias: str, version: int, *, reason: str = "") -> VersionInfo:
        return self.registry.set_alias(name, alias, version, actor=self.actor, reason=reason)

    def delete_alias(self, name: str, alias: str) -> None:
        self.registry.delete_alias(name, alias, actor=self.actor)

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasEvent]:
        return self.registry.alias_history(name, alias)

    def rollback(self, name: str, alias: str) -> VersionInfo:
        return self.registry.rollback(name, alias, actor=self.actor)

    def gc(self, *, grace_seconds: int | None = None) -> GcResult:
        return self.registry.gc(grace_seconds=grace_seconds)

    def get_deployment(self, ref: str) -> DeploymentSpec:
        info = self.registry.get_version(ref)
        return self.registry.get_deployment(info.model, info.version)

    def set_deployment(self, ref: str, **changes: Any) -> DeploymentSpec:
        # Running servers sharing this database pick the change up within a poll.
        info = self.registry.get_version(ref)
        return self.registry.set_deployment(info.model, info.version, actor=self.actor, **changes)

    def get_routing(self, name: str) -> dict[str, Any] | None:
        policy = self.registry.get_routing(name)
        return None if policy is None else policy.to_json()

    def set_routing(self, name: str, policy: dict[str, Any]) -> dict[str, Any]:
        return routing.set_routing(self.registry.db, name, policy, actor=self.actor).to_json()

    def clear_routing(self, name: str) -> None:
        routing.clear_routing(self.registry.db, name, actor=self.actor)

    # A local rollout is judged by the controller of a server on the same registry.
    def start_rollout(self, name: str, plan: dict[str, Any]) -> dict[str, Any]:
        db = self.registry.db
        return rollouts.start_rollout(db, name, plan, actor=self.actor).to_json()

    def list_rollouts(self, name: str) -> list[dict[str, Any]]:
        return [r.to_json() for r in rollouts.list_rollouts(self.registry.db, name)]

    def get_rollout(self, name: str, rollout_id: int) -> dict[str, Any]:
        return rollouts.get_rollout(self.registry.db, name, rollout_id).to_json()

    def cancel_rollout(self, name: str, rollout_id: int) -> dict[str, Any]:
        db = self.registry.db
        return rollouts.cancel_rollout(db, name, rollout_id, actor=self.actor).to_json()

    # A schedule's runs are started by the scheduler of a server on the same registry.
    def create_schedule(self, body: dict[str, Any]) -> dict[str, Any]:
        return schedules.create_schedule(self.registry.db, body, actor=self.actor).to_json()

    def list_schedules(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in schedules.list_schedules(self.registry.db)]

    def get_schedule(self, name: str) -> dict[str, Any]:
        return schedules.get_schedule(self.registry.db, name).to_json()

    def update_schedule(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        return schedules.update_schedule(self.registry.db, name, changes).to_json()

    def delete_schedule(self, name: str) -> None:
        schedules.delete_schedule(self.registry.db, name)

    def run_schedule(self, name: str) -> dict[str, Any]:
        """Queue a run; a server on this registry (or `maas jobs run`) runs it."""
        runner = JobRunner(self.registry, self.settings)
        found = schedules.get_schedule(self.registry.db, name)
        return run_now(runner, found, self.actor).model_dump(mode="json")


def open_client(settings: Settings) -> MaasClient:
    """The SDK client of remote mode (``--url``): every HTTP call the CLI makes goes through it."""
    if not settings.url:
        raise ValueError("remote mode needs a server URL (--url or MAAS_URL)")
    # `audit verify` walks the whole chain and `feedback export` writes a dataset, both
    # server-side: the CLI waits longer than the SDK's default for one answer.
    return MaasClient(settings.url, settings.api_key, timeout=300.0)


def open_backend(settings: Settings) -> Backend:
    if settings.url:
        return open_client(settings)
    return LocalBackend(settings)
