"""Change epochs: registry writes bump "registry" themselves; the watcher sees other processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from maas.config import Settings
from maas.errors import ConflictError
from maas.registry.epochs import KEYS, REGISTRY, EpochWatcher, read_all
from maas.registry.store import Registry
from maas.security.keys import KeyPolicy, KeyStore


def _registry_epoch(registry: Registry) -> int:
    return read_all(registry.db).get(REGISTRY, 0)


def test_every_kind_of_registry_write_bumps_the_registry_epoch_once(
    registry: Registry, hf_dir: Path
) -> None:
    before = _registry_epoch(registry)
    registry.push(hf_dir, "m", task="text-classification")  # many rows, one transaction...
    after_push = _registry_epoch(registry)
    assert after_push > before
    registry.push(hf_dir, "m")
    writes = [
        lambda: registry.set_alias("m", "canary", 2),
        lambda: registry.delete_alias("m", "canary"),
        lambda: registry.update_version("m:2", tags={"pii_policy": "redact"}),
        lambda: registry.archive_version("m:2"),
        lambda: registry.delete_version("m:2"),
        lambda: registry.update_model("m", description="changed"),
    ]
    for write in writes:
        seen = _registry_epoch(registry)
        write()
        assert _registry_epoch(registry) == seen + 1  # ...bumped once per transaction


def test_a_failed_write_bumps_nothing_and_reads_never_do(registry: Registry, hf_dir: Path) -> None:
    registry.push(hf_dir, "m", task="text-classification")
    seen = _registry_epoch(registry)
    with pytest.raises(ConflictError):
        registry.archive_version("m:1")  # the production alias points at it
    registry.resolve("m")
    registry.list_versions("m")
    assert _registry_epoch(registry) == seen


def test_commit_callbacks_run_in_this_process_for_the_epochs_a_commit_bumped(
    registry: Registry, hf_dir: Path
) -> None:
    calls: list[str] = []
    registry.db.on_commit(REGISTRY, lambda: calls.append(REGISTRY))
    registry.db.on_commit(KEYS, lambda: calls.append(KEYS))
    registry.push(hf_dir, "m", task="text-classification")
    assert calls == [REGISTRY]
    keys = KeyStore(registry.db)
    keys.revoke(keys.create("k", policy=KeyPolicy())[0].id)
    assert calls == [REGISTRY, KEYS]  # a key change is not a registry change
    with pytest.raises(ConflictError):
        registry.archive_version("m:1")
    assert calls == [REGISTRY, KEYS]  # rolled back: nothing to tell


def test_the_watcher_calls_back_for_changes_made_by_another_process(
    settings: Settings, hf_dir: Path
) -> None:
    ours, theirs = Registry(settings), Registry(settings)  # two processes' views
    try:
        watcher = EpochWatcher(ours.db)
        moved: list[str] = []
        watcher.on(REGISTRY, lambda: moved.append(REGISTRY))
        watcher.on(KEYS, lambda: moved.append(KEYS))
        assert watcher.poll(read_all(ours.db)) == []  # the baseline
        theirs.push(hf_dir, "m", task="text-classification")
        assert watcher.poll(read_all(ours.db)) == [REGISTRY]
        assert watcher.poll(read_all(ours.db)) == []  # nothing new
        keys = KeyStore(theirs.db)
        keys.revoke(keys.create("k", policy=KeyPolicy())[0].id)
        assert watcher.poll(read_all(ours.db)) == [KEYS]
        assert moved == [REGISTRY, KEYS]
    finally:
        ours.close()
        theirs.close()
