from pathlib import Path

import pytest

from maas.config import Settings
from maas.errors import ConflictError, InvalidRequestError, NotFoundError
from maas.registry.store import Registry
from tests.helpers import blob_count, make_hf_dir


def test_push_creates_model_and_numbered_versions(registry: Registry, hf_dir: Path) -> None:
    v1 = registry.push(hf_dir, "sentiment", task="text-classification", description="first")
    v2 = registry.push(hf_dir, "sentiment")
    assert (v1.ref, v2.ref) == ("sentiment:1", "sentiment:2")
    assert v1.digest == v2.digest
    assert v1.format == "hf"
    assert v1.description == "first"
    assert {f.path for f in v1.files or []} == {
        "config.json",
        "model.safetensors",
        "tokenizer/vocab.txt",
    }
    model = registry.get_model("sentiment")
    assert (model.task, model.version_count, model.latest_version) == ("text-classification", 2, 2)


def test_task_is_inferred_or_required(registry: Registry, hf_dir: Path, tmp_path: Path) -> None:
    assert registry.push(hf_dir, "inferred").task == "text-classification"
    plain = make_hf_dir(tmp_path / "plain")
    (plain / "config.json").write_text('{"architectures": ["BertModel"]}')
    with pytest.raises(InvalidRequestError, match="pass a task"):
        registry.push(plain, "unknown-task")


def test_task_mismatch_with_existing_model_is_a_conflict(registry: Registry, hf_dir: Path) -> None:
    registry.push(hf_dir, "m", task="text-classification")
    with pytest.raises(ConflictError, match="has task 'text-classification'"):
        registry.push(hf_dir, "m", task="embeddings")


def test_version_numbers_are_never_reused_after_delete(registry: Registry, hf_dir: Path) -> None:
    registry.push(hf_dir, "m", task="text-classification")
    registry.push(hf_dir, "m")
    registry.delete_version("m:2")
    assert registry.push(hf_dir, "m").version == 3
    assert [v.version for v in registry.list_versions("m")] == [1, 3]


def test_bare_name_resolves_production_alias_else_latest_ready(
    registry: Registry, hf_dir: Path
) -> None:
    for _ in range(3):
        registry.push(hf_dir, "m", task="text-classification")
    assert registry.resolve("m").version == 1  # the first version carries production
    registry.delete_alias("m", "production")
    assert registry.resolve("m").version == 3
    registry.archive_version("m:3")
    assert registry.resolve("m").version == 2
    registry.set_alias("m", "production", 1)
    assert registry.resolve("m").version == 1
    assert registry.resolve("m@production").version == 1
    assert registry.resolve("m:3").status == "archived"
    with pytest.raises(NotFoundError, match="no alias 'canary'"):
        registry.resolve("m@canary")
    with pytest.raises(NotFoundError, match="m:9 not found"):
        registry.resolve("m:9")
    with pytest.raises(NotFoundError, match="'nope' not found"):
        registry.resolve("nope")


def test_first_version_gets_production_so_later_versions_wait_for_promotion(
    registry: Registry, hf_dir: Path
) -> None:
    first = registry.push(hf_dir, "m", task="text-classification", created_by="alice")
    assert first.aliases == ["production"]
    second = registry.push(hf_dir, "m")
    assert second.aliases == []
    assert registry.resolve("m").version == 1  # v2 is not served under the bare name yet
    [event] = registry.alias_history("m", "production")
    assert (event.from_version, event.to_version, event.actor, event.reason) == (
        None,
        1,
        "alice",
        "first version",
    )
    registry.set_alias("m", "production", 2)
    assert registry.resolve("m").version == 2


def test_a_model_that_already_has_versions_gets_no_new_alias(
    registry: Registry, hf_dir: Path
) -> None:
    registry.push(hf_dir, "m", task="text-classification")
    registry.push(hf_dir, "m")
    registry.delete_alias("m", "production")
    assert registry.push(hf_dir, "m").aliases == []
    assert registry.resolve("m").version == 3  # no production alias: latest ready


def test_datasets_get_no_production_alias(registry: Registry, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    (root / "dataset.json").write_text('{"kind": "text", "label_names": ["a"]}')
    (root / "train.jsonl").write_text('{"text": "x", "label": "a"}\n')
    assert registry.push(root, "reviews").aliases == []


def test_alias_moves_are_recorded_with_actor_and_reason(registry: Registry, hf_dir: Path) -> None:
    for _ in range(3):
        registry.push(hf_dir, "m", task="text-classification")
    registry.set_alias("m", "production", 2, actor="alice", reason="launch")
    registry.set_alias("m", "production", 2, actor="alice")  # no-op: not a move
    registry.set_alias("m", "production", 3, actor="bob", reason="better f1")
    registry.set_alias("m", "canary", 2)
    history = registry.alias_history("m", "production")
    assert [(e.from_version, e.to_version, e.actor, e.reason) for e in history] == [
        (None, 1, None, "first version"),
        (1, 2, "alice", "launch"),
        (2, 3, "bob", "better f1"),
    ]
    assert len(registry.alias_history("m")) == 4
    assert registry.list_aliases("m") == {"canary": 2, "production": 3}
    assert registry.get_version("m:3").aliases == ["production"]


def test_rollback_returns_to_previous_version_and_toggles(registry: Registry, hf_dir: Path) -> None:
    for _ in range(3):
        registry.push(hf_dir, "m", task="text-classification")
    registry.set_alias("m", "production", 1)
    with pytest.raises(ConflictError, match="nothing to roll back"):
        registry.rollback("m", "production")
    registry.set_alias("m", "production", 2)
    registry.set_alias("m", "production", 3)
    assert registry.rollback("m", "production", actor="ops").version == 2
    assert registry.rollback("m", "production").version == 3
    last = registry.alias_history("m", "production")[-1]
    assert last.reason == "rollback from 2"
    with pytest.raises(NotFoundError):
        registry.rollback("m", "canary")


def test_aliased_versions_cannot_be_archived_or_deleted(registry: Registry, hf_dir: Path) -> None:
    registry.push(hf_dir, "m", task="text-classification")
    registry.set_alias("m", "production", 1)
    with pytest.raises(ConflictError, match="production"):
        registry.archive_version("m:1")
    with pytest.raises(ConflictError, match="production"):
        registry.delete_version("m:1")
    registry.delete_alias("m", "production")
    assert registry.alias_history("m")[-1].to_version is None
    registry.archive_version("m:1")
    with pytest.raises(ConflictError, match="only ready versions"):
        registry.set_alias("m", "production", 1)
    assert registry.restore_version("m:1").status == "ready"


def test_lineage_links_parent_versions_across_models(registry: Registry, hf_dir: Path) -> None:
    registry.push(hf_dir, "teacher", task="text-classification")
    child = registry.push(
        hf_dir,
        "student",
        task="text-classification",
        parent="teacher:1",
        job_id="job-1",
        params={"lr": 0.01},
        metrics={"acc": 0.9},
    )
    assert child.parent == "teacher:1"
    assert child.job_id == "job-1"
    assert child.params == {"lr": 0.01}
    updated = registry.update_version("student:1", metrics={"f1": 0.8})
    assert updated.metrics == {"acc": 0.9, "f1": 0.8}
    with pytest.raises(NotFoundError):
        registry.push(hf_dir, "student", parent="teacher:7")


def test_gc_removes_only_unreferenced_blobs(
    registry: Registry, settings: Settings, hf_dir: Path, tmp_path: Path
) -> None:
    registry.push(hf_dir, "a", task="text-classification")
    other = make_hf_dir(tmp_path / "other", seed=1)
    registry.push(other, "b", task="text-classification")
    before = blob_count(settings.home)
    registry.materialize("b:1")
    registry.delete_alias("b", "production")  # given to the first version
    registry.delete_version("b:1")
    result = registry.gc(grace_seconds=0)
    # config.json and vocab.txt are shared with "a"; only b's weights go.
    assert result.removed_blobs == 1
    assert blob_count(settings.home) == before - 1
    assert registry.check_consistency(deep=True) == []
    assert not any(settings.cache_dir.iterdir())


def test_materialize_returns_verified_identical_files(registry: Registry, hf_dir: Path) -> None:
    registry.push(hf_dir, "m", task="text-classification")
    out = registry.materialize("m")
    for path in hf_dir.rglob("*"):
        if path.is_file():
            assert (out / path.relative_to(hf_dir)).read_bytes() == path.read_bytes()


def test_consistency_check_reports_missing_blob(registry: Registry, hf_dir: Path) -> None:
    info = registry.push(hf_dir, "m", task="text-classification")
    sha = next(f.sha256 for f in info.files or [] if f.path == "config.json")
    registry.artifacts.blob_path(sha).unlink()
    assert any("config.json blob missing" in p for p in registry.check_consistency())


def test_model_delete_requires_force_when_versions_exist(registry: Registry, hf_dir: Path) -> None:
    registry.push(hf_dir, "m", task="text-classification")
    registry.set_alias("m", "production", 1)
    with pytest.raises(ConflictError, match="force"):
        registry.delete_model("m")
    registry.delete_model("m", force=True)
    with pytest.raises(NotFoundError):
        registry.get_model("m")
    assert registry.push(hf_dir, "m", task="text-classification").version == 1


def test_create_model_validates_and_refuses_duplicates(registry: Registry) -> None:
    registry.create_model("empty", "embeddings", description="d", tags={"team": "nlp"})
    with pytest.raises(ConflictError):
        registry.create_model("empty", "embeddings")
    with pytest.raises(InvalidRequestError, match="unknown task"):
        registry.create_model("x", "magic")
    with pytest.raises(NotFoundError, match="no ready version"):
        registry.resolve("empty")
    assert registry.update_model("empty", tags={"team": "cv"}).tags == {"team": "cv"}


def test_unsafe_formats_flag_allows_pickle_weights(tmp_path: Path, hf_dir: Path) -> None:
    (hf_dir / "pytorch_model.bin").write_bytes(b"\x80\x04.")
    reg = Registry(Settings(home=tmp_path / "unsafe", allow_unsafe_formats=True))
    try:
        info = reg.push(hf_dir, "m", task="text-classification")
        assert "pytorch_model.bin" in {f.path for f in info.files or []}
    finally:
        reg.close()
