import hashlib
import os
import time
from pathlib import Path

import pytest

from maas.errors import IntegrityError
from maas.registry.artifacts import ArtifactStore, FileEntry, Manifest


def test_put_stream_stores_content_under_its_sha256(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "blobs")
    entry = store.put_stream([b"hello ", b"world"])
    assert entry.sha256 == hashlib.sha256(b"hello world").hexdigest()
    assert entry.size == 11
    assert store.blob_path(entry.sha256).read_bytes() == b"hello world"
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []


def test_identical_content_is_stored_once(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "blobs")
    a = store.put_stream([b"same"])
    b = store.put_stream([b"same"])
    assert a == b
    assert len(list(store.iter_blobs())) == 1


def test_failed_write_leaves_no_temp_file(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "blobs")

    def broken() -> object:
        yield b"partial"
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError):
        store.put_stream(broken())  # type: ignore[arg-type]
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []
    assert list(store.iter_blobs()) == []


def test_manifest_digest_is_independent_of_file_order() -> None:
    a = FileEntry("a.txt", 1, "0" * 64)
    b = FileEntry("b/c.bin", 2, "1" * 64)
    assert Manifest.of([a, b]).digest == Manifest.of([b, a]).digest
    assert Manifest.of([a]).digest != Manifest.of([a, b]).digest
    assert Manifest.of([a, b]).digest.startswith("sha256:")


def test_materialize_detects_a_corrupted_blob_and_leaves_no_directory(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "blobs")
    entry = store.put_stream([b"weights"])
    manifest = Manifest.of([FileEntry("w.bin", entry.size, entry.sha256)])
    path = store.blob_path(entry.sha256)
    path.chmod(0o644)
    path.write_bytes(b"WEIGHTS")  # same size, different bytes
    dest = tmp_path / "out"
    with pytest.raises(IntegrityError, match="corrupted"):
        store.materialize(manifest, dest)
    assert not dest.exists()


def test_materialize_writes_every_file(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "blobs")
    one, two = store.put_stream([b"1"]), store.put_stream([b"22"])
    manifest = Manifest.of([FileEntry("a/one", 1, one.sha256), FileEntry("two", 2, two.sha256)])
    dest = store.materialize(manifest, tmp_path / "out")
    assert (dest / "a" / "one").read_bytes() == b"1"
    assert (dest / "two").read_bytes() == b"22"


def test_gc_keeps_referenced_and_young_blobs(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "blobs")
    keep = store.put_stream([b"keep"])
    old = store.put_stream([b"old"])
    young = store.put_stream([b"young"])
    past = time.time() - 7200
    for entry in (keep, old):
        os.utime(store.blob_path(entry.sha256), (past, past))
    removed = store.gc({keep.sha256}, grace_seconds=3600)
    assert removed == [old.sha256]
    assert store.has(keep.sha256)
    assert store.has(young.sha256)
