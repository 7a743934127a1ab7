"""The blob store with a master key: encrypted blobs, plaintext addresses, mixed stores."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from maas import crypto
from maas.config import Settings
from maas.crypto import DecryptionError, WrongMasterKeyError
from maas.errors import IntegrityError
from maas.registry.artifacts import ArtifactStore, FileEntry, Manifest
from maas.registry.store import Registry
from tests.helpers import make_hf_dir

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


@pytest.fixture
def encrypted_settings(home: Path) -> Settings:
    return Settings(home=home, gc_grace_seconds=0, master_key=base64.b64encode(KEY).decode())


@pytest.fixture
def encrypted_registry(encrypted_settings: Settings) -> Iterator[Registry]:
    reg = Registry(encrypted_settings)
    yield reg
    reg.close()


def blob_files(store: ArtifactStore) -> dict[str, bytes]:
    return {sha: path.read_bytes() for sha, path in store.iter_blobs()}


def test_blobs_are_addressed_and_sized_by_their_plaintext(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "blobs", master_key=KEY)
    entry = store.put_stream([b"hello ", b"world"])
    assert entry.sha256 == hashlib.sha256(b"hello world").hexdigest()
    assert entry.size == 11
    raw = store.blob_path(entry.sha256).read_bytes()
    assert raw.startswith(crypto.MAGIC)
    assert b"hello world" not in raw
    assert len(raw) == crypto.encrypted_size(11)
    assert b"".join(store.open_verified(entry.sha256)) == b"hello world"
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []


def test_empty_blob_round_trips(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "blobs", master_key=KEY)
    entry = store.put_stream([])
    assert entry.sha256 == hashlib.sha256(b"").hexdigest()
    assert b"".join(store.open_verified(entry.sha256)) == b""
    store.verify(entry.sha256)


def test_identical_content_is_stored_once_when_encrypted(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "blobs", master_key=KEY)
    a = store.put_stream([b"same"])
    first = store.blob_path(a.sha256).read_bytes()
    assert store.put_stream([b"same"]) == a
    assert store.has(a.sha256)
    assert len(list(store.iter_blobs())) == 1
    assert store.blob_path(a.sha256).read_bytes() == first  # kept, not re-encrypted


def test_failed_encrypted_write_leaves_no_temp_file(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "blobs", master_key=KEY)

    def broken() -> Iterator[bytes]:
        yield b"partial"
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError):
        store.put_stream(broken())
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []
    assert list(store.iter_blobs()) == []


def test_get_returns_a_readable_plaintext_file(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "blobs", master_key=KEY, chunk_size=64)
    data = os.urandom(1000)
    entry = store.put_stream([data])
    with store.get(entry.sha256) as f:
        assert f.read(10) == data[:10]
        assert f.read() == data[10:]


def test_registry_push_and_materialize_with_encryption_on(
    encrypted_registry: Registry, hf_dir: Path, tmp_path: Path
) -> None:
    info = encrypted_registry.push(hf_dir, "m", task="text-classification")
    out = encrypted_registry.materialize("m")
    for path in hf_dir.rglob("*"):
        if path.is_file():
            assert (out / path.relative_to(hf_dir)).read_bytes() == path.read_bytes()

    # No blob on disk holds any file's plaintext, or even a telling piece of it.
    stored = blob_files(encrypted_registry.artifacts)
    assert len(stored) == 3
    weights = (hf_dir / "model.safetensors").read_bytes()
    for raw in stored.values():
        assert raw.startswith(crypto.MAGIC)
        assert b"BertForSequenceClassification" not in raw
        assert b"hello\nworld" not in raw
        assert weights[-32:] not in raw

    # The version digest is the same as in a store without encryption.
    plain = Registry(Settings(home=tmp_path / "plain-home"))
    try:
        assert plain.push(hf_dir, "m", task="text-classification").digest == info.digest
    finally:
        plain.close()
    assert encrypted_registry.check_consistency(deep=True) == []


def test_export_tar_of_an_encrypted_version_holds_the_plaintext(
    encrypted_registry: Registry, hf_dir: Path
) -> None:
    encrypted_registry.push(hf_dir, "m", task="text-classification")
    archive = b"".join(encrypted_registry.iter_version_tar("m"))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        member = tar.extractfile("config.json")
        assert member is not None
        assert member.read() == (hf_dir / "config.json").read_bytes()


def test_gc_removes_unreferenced_encrypted_blobs(
    encrypted_registry: Registry, hf_dir: Path, tmp_path: Path
) -> None:
    encrypted_registry.push(hf_dir, "a", task="text-classification")
    encrypted_registry.push(make_hf_dir(tmp_path / "b", seed=1), "b", task="text-classification")
    encrypted_registry.delete_model("b", force=True)  # its only version, and its alias
    result = encrypted_registry.gc(grace_seconds=0)
    assert result.removed_blobs == 1
    assert result.freed_bytes > 0
    assert encrypted_registry.check_consistency(deep=True) == []


def test_mixed_store_reads_old_plaintext_blobs_after_gaining_a_key(
    home: Path, hf_dir: Path, tmp_path: Path
) -> None:
    plain = Registry(Settings(home=home))
    try:
        plain.push(hf_dir, "old", task="text-classification")
    finally:
        plain.close()
    reg = Registry(Settings(home=home, master_key=KEY.hex()))
    try:
        other = make_hf_dir(tmp_path / "other", seed=1)
        reg.push(other, "new", task="text-classification")
        old_out, new_out = reg.materialize("old"), reg.materialize("new")
        assert (old_out / "model.safetensors").read_bytes() == (
            hf_dir / "model.safetensors"
        ).read_bytes()
        assert (new_out / "model.safetensors").read_bytes() == (
            other / "model.safetensors"
        ).read_bytes()
        kinds = {crypto.looks_encrypted(path) for _, path in reg.artifacts.iter_blobs()}
        assert kinds == {True, False}
        assert reg.check_consistency(deep=True) == []
    finally:
        reg.close()


def test_storing_content_that_exists_as_plaintext_encrypts_that_blob(tmp_path: Path) -> None:
    plain = ArtifactStore(tmp_path / "blobs")
    entry = plain.put_stream([b"weights"])
    assert not crypto.looks_encrypted(plain.blob_path(entry.sha256))
    encrypted = ArtifactStore(tmp_path / "blobs", master_key=KEY)
    assert encrypted.put_stream([b"weights"]) == entry
    assert crypto.looks_encrypted(encrypted.blob_path(entry.sha256))
    assert b"".join(encrypted.open_verified(entry.sha256)) == b"weights"


def test_a_plaintext_blob_that_begins_with_the_magic_bytes_is_read_as_plaintext(
    tmp_path: Path,
) -> None:
    lookalike = crypto.MAGIC + b"\x00\x01" + os.urandom(300)
    entry = ArtifactStore(tmp_path / "blobs").put_stream([lookalike])
    for key in (None, KEY):
        store = ArtifactStore(tmp_path / "blobs", master_key=key)
        assert b"".join(store.open_verified(entry.sha256)) == lookalike
        with store.get(entry.sha256) as f:
            assert f.read() == lookalike
    result = ArtifactStore(tmp_path / "blobs", master_key=KEY).rewrap_keys(OTHER_KEY)
    assert (result.rewrapped, result.plaintext) == (0, 1)


def test_reading_an_encrypted_blob_without_a_key_is_a_clean_error(tmp_path: Path) -> None:
    entry = ArtifactStore(tmp_path / "blobs", master_key=KEY).put_stream([b"weights"])
    store = ArtifactStore(tmp_path / "blobs")
    with pytest.raises(DecryptionError, match="no master key is configured"):
        store.verify(entry.sha256)


def test_wrong_master_key_fails_materialize_cleanly_and_leaves_no_directory(
    tmp_path: Path,
) -> None:
    entry = ArtifactStore(tmp_path / "blobs", master_key=KEY).put_stream([b"weights"])
    manifest = Manifest.of([FileEntry("w.safetensors", entry.size, entry.sha256)])
    store = ArtifactStore(tmp_path / "blobs", master_key=OTHER_KEY)
    dest = tmp_path / "out"
    with pytest.raises(
        WrongMasterKeyError, match=f"wrong master key for blob sha256:{entry.sha256}"
    ):
        store.materialize(manifest, dest)
    assert not dest.exists()


def test_a_tampered_encrypted_blob_fails_materialize_and_leaves_no_directory(
    tmp_path: Path,
) -> None:
    store = ArtifactStore(tmp_path / "blobs", master_key=KEY, chunk_size=64)
    entry = store.put_stream([os.urandom(500)])
    path = store.blob_path(entry.sha256)
    raw = bytearray(path.read_bytes())
    raw[crypto.HEADER_SIZE + 100] ^= 0x01
    path.write_bytes(bytes(raw))
    manifest = Manifest.of([FileEntry("w.bin", entry.size, entry.sha256)])
    with pytest.raises(IntegrityError, match="does not authenticate"):
        store.materialize(manifest, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_consistency_check_reports_a_truncated_encrypted_blob(
    encrypted_registry: Registry, hf_dir: Path
) -> None:
    info = encrypted_registry.push(hf_dir, "m", task="text-classification")
    sha = next(f.sha256 for f in info.files or [] if f.path == "model.safetensors")
    path = encrypted_registry.artifacts.blob_path(sha)
    path.write_bytes(path.read_bytes()[:-1])
    assert any(
        "model.safetensors blob has wrong size" in p for p in encrypted_registry.check_consistency()
    )


def test_rewrap_keys_rotates_every_encrypted_blob(
    encrypted_registry: Registry, encrypted_settings: Settings, hf_dir: Path
) -> None:
    encrypted_registry.push(hf_dir, "m", task="text-classification")
    store = encrypted_registry.artifacts
    result = store.rewrap_keys(OTHER_KEY)
    assert (result.rewrapped, result.already, result.plaintext) == (3, 0, 0)
    rotated = ArtifactStore(encrypted_settings.blobs_dir, master_key=OTHER_KEY)
    for sha, _ in rotated.iter_blobs():
        rotated.verify(sha)
        with pytest.raises(WrongMasterKeyError):
            store.verify(sha)
    again = ArtifactStore(encrypted_settings.blobs_dir, master_key=KEY).rewrap_keys(OTHER_KEY)
    assert (again.rewrapped, again.already) == (0, 3)


def test_settings_reject_a_master_key_of_the_wrong_length_without_echoing_it() -> None:
    secret = base64.b64encode(b"k" * 31).decode()
    with pytest.raises(ValueError, match="MAAS_MASTER_KEY must be 32 random bytes") as info:
        Settings(master_key=secret)
    assert secret not in str(info.value)


def test_settings_read_a_master_key_file_in_hex_or_base64(tmp_path: Path) -> None:
    for text in (KEY.hex() + "\n", base64.urlsafe_b64encode(KEY).decode()):
        key_file = tmp_path / "master.key"
        key_file.write_text(text)
        assert Settings(master_key_file=key_file).master_key_bytes == KEY
    assert Settings().master_key_bytes is None


def test_settings_refuse_two_master_key_sources_and_a_bad_file(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    key_file.write_text(KEY.hex())
    with pytest.raises(ValueError, match="not both"):
        Settings(master_key=KEY.hex(), master_key_file=key_file)
    key_file.write_text("too short")
    with pytest.raises(ValueError, match=r"MAAS_MASTER_KEY_FILE .* must be 32 random bytes"):
        Settings(master_key_file=key_file)
    with pytest.raises(ValueError, match="cannot read MAAS_MASTER_KEY_FILE"):
        Settings(master_key_file=tmp_path / "missing.key")


FLAT_MEMORY_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, resource, sys, time
    from pathlib import Path

    from maas.registry.artifacts import ArtifactStore

    def rss_kib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

    def hwm_kib():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))

    total, piece = int(sys.argv[2]), 256 * 1024 + 3  # odd pieces: re-cut into 1 MiB chunks
    seed = hashlib.sha256(b"seed").digest() * (piece // 32 + 1)
    store = ArtifactStore(Path(sys.argv[1]), master_key=bytes(range(32)))
    baseline, baseline_hwm = rss_kib(), hwm_kib()

    def generate():
        sent, i = 0, 0
        while sent < total:
            n = min(piece, total - sent)
            yield i.to_bytes(8, "big") + seed[: n - 8]
            sent, i = sent + n, i + 1

    expected = hashlib.sha256()
    for block in generate():
        expected.update(block)
    t0 = time.perf_counter()
    entry = store.put_stream(generate())
    t1 = time.perf_counter()
    read = 0
    for chunk in store.open_verified(entry.sha256):
        read += len(chunk)
    t2 = time.perf_counter()
    print(json.dumps({
        "baseline_kib": baseline, "peak_kib": rss_kib(),
        "baseline_hwm_kib": baseline_hwm, "peak_hwm_kib": hwm_kib(),
        "size": entry.size, "read": read,
        "digest_ok": entry.sha256 == expected.hexdigest(),
        "stored": store.blob_path(entry.sha256).stat().st_size,
        "encrypt_s": t1 - t0, "decrypt_s": t2 - t1,
    }))
    """
)


@pytest.mark.slow
def test_a_200_mb_file_round_trips_with_flat_memory(tmp_path: Path) -> None:
    size = 200 * 1024 * 1024
    # ru_maxrss survives execve (getrusage(2)): a child started straight from this
    # pytest process would report pytest's own peak as its baseline, hiding any
    # growth below it. A shell that forks the child gives it a small starting figure.
    done = subprocess.run(
        [
            "/bin/sh",
            "-c",
            '"$@"; exit $?',
            "sh",
            sys.executable,
            "-W",
            "error",
            "-c",
            FLAT_MEMORY_SCRIPT,
            str(tmp_path / "blobs"),
            str(size),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["size"] == report["read"] == size
    assert report["digest_ok"]
    assert report["stored"] == crypto.encrypted_size(size)
    assert report["baseline_kib"] < 256 * 1024, report  # the child's own figure, not pytest's
    for peak, baseline in (("peak_kib", "baseline_kib"), ("peak_hwm_kib", "baseline_hwm_kib")):
        growth_mib = (report[peak] - report[baseline]) / 1024
        assert growth_mib < 64, report
