"""The bounded cache of materialized versions (the directories models load from)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from maas.registry.artifacts import ArtifactStore, FileEntry, Manifest
from maas.registry.blobcache import VersionCache
from maas.registry.store import Registry
from tests.helpers import make_hf_dir
from tests.s3 import s3_settings

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

SIZE = 1000


def version(store: ArtifactStore, fill: bytes) -> Manifest:
    entry = store.put_stream([fill * SIZE])
    return Manifest.of([FileEntry("weights.dat", entry.size, entry.sha256)])


def age(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_a_hit_is_served_from_local_files_without_the_object_store(
    s3_registry: Registry, s3: S3Client, bucket: str, hf_dir: Path
) -> None:
    s3_registry.push(hf_dir, "m", task="text-classification")
    first = s3_registry.materialize("m")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=item["Key"])
    assert s3_registry.materialize("m") == first
    assert (first / "config.json").read_bytes() == (hf_dir / "config.json").read_bytes()


def test_past_the_bound_the_least_recently_used_version_goes(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "blobs")
    cache = VersionCache(tmp_path / "cache", max_bytes=2 * SIZE, keep_recent_seconds=0)
    a, b, c = (version(store, fill) for fill in (b"a", b"b", b"c"))
    path_a, path_b = cache.get(a, store), cache.get(b, store)
    age(path_a, 100)
    age(path_b, 50)
    assert cache.get(a, store) == path_a  # a hit: a is now the most recently used
    path_c = cache.get(c, store)
    assert not path_b.exists()
    assert path_a.is_dir() and path_c.is_dir()
    assert cache.size_bytes() == 2 * SIZE


def test_unbounded_cache_keeps_everything(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "blobs")
    cache = VersionCache(tmp_path / "cache", keep_recent_seconds=0)
    for fill in (b"a", b"b", b"c"):
        cache.get(version(store, fill), store)
    assert len(cache.entries()) == 3


def test_versions_used_recently_stay_even_over_the_bound(
    home: Path, s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    # The bound comes from MAAS_CACHE_MAX_BYTES; it is smaller than one version here.
    reg = Registry(s3_settings(home, s3_endpoint, bucket, cache_max_bytes=1))
    try:
        reg.push(make_hf_dir(tmp_path / "a", seed=1), "a", task="text-classification")
        reg.push(make_hf_dir(tmp_path / "b", seed=2), "b", task="text-classification")
        path_a = reg.materialize("a")
        path_b = reg.materialize("b")
        # a may still be loading in the process that asked for it: it stays.
        assert path_a.is_dir() and path_b.is_dir()
        age(path_a, 3600)
        reg.push(make_hf_dir(tmp_path / "c", seed=3), "c", task="text-classification")
        reg.materialize("c")
        assert not path_a.exists()
        assert path_b.is_dir()  # used within the last minutes
        # An evicted version comes back from the object store on its next use.
        assert (reg.materialize("a") / "config.json").is_file()
    finally:
        reg.close()


def test_gc_removes_the_cached_files_of_deleted_versions(registry: Registry, hf_dir: Path) -> None:
    registry.push(hf_dir, "m", task="text-classification")
    cached = registry.materialize("m")
    registry.delete_model("m", force=True)
    registry.gc()
    assert not cached.exists()
    assert registry.cache.entries() == []
