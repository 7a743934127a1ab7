"""Content-addressed blob store and version manifests.

A blob's name is the sha256 of its content; where the bytes rest is a
:class:`~maas.registry.blobstore.BlobBackend`: a local directory (the
default) or an S3-compatible bucket. This module does what must be the same
on every backend: hashing, dedupe, encryption, and verifying every read. A
blob is built in a local staging file, hashed as it is written, and only then
handed to the backend, which stores it atomically; a blob is only ever
referenced by a registry row after it exists in full.

Encryption at rest (see ``docs/encryption.md``): a store given a master key
writes every new blob encrypted (:mod:`maas.crypto`), before it
leaves this machine. A blob's name, digest and size stay those of its
*plaintext*, so content addresses, manifests and dedupe do not depend on
encryption. Reads tell the two kinds apart by the magic bytes at the start,
so a store that gained a master key later still reads its older plaintext
blobs; storing content that exists as a plaintext blob replaces that blob
with an encrypted one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from maas import crypto
from maas.config import Settings
from maas.errors import IntegrityError, InvalidRequestError, NotFoundError, UnavailableError
from maas.registry.blobstore import BlobBackend, ChunkReader, StoredBlob
from maas.registry.blobstore_local import LocalBlobBackend

CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of a version: its path relative to the version root."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class RewrapResult:
    """What a master-key rotation did, blob by blob."""

    rewrapped: int  # data key now wrapped by the new master key
    already: int  # was under the new master key already (a rotation run again)
    plaintext: int  # stored unencrypted; nothing to re-wrap


@dataclass(frozen=True, slots=True)
class GcOutcome:
    removed: list[StoredBlob]
    kept: int


@dataclass(frozen=True, slots=True)
class Manifest:
    files: tuple[FileEntry, ...]

    @classmethod
    def of(cls, entries: Iterable[FileEntry]) -> Manifest:
        return cls(tuple(sorted(entries, key=lambda e: e.path)))

    def canonical_json(self) -> bytes:
        doc = {
            "schema": 1,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @property
    def digest(self) -> str:
        """The version digest: sha256 over the canonical manifest."""
        return "sha256:" + hashlib.sha256(self.canonical_json()).hexdigest()

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files)


def _raw_digest_matches(src: BinaryIO, sha256: str) -> bool:
    src.seek(0)
    hasher = hashlib.sha256()
    while chunk := src.read(CHUNK):
        hasher.update(chunk)
    src.seek(0)
    return hasher.hexdigest() == sha256


def open_backend(settings: Settings) -> BlobBackend:
    """The backend ``MAAS_ARTIFACT_URL`` names: by default ``$MAAS_HOME/blobs``."""
    url = settings.artifact_url
    if url is None:
        return LocalBlobBackend(settings.blobs_dir)
    if url.startswith("file://"):
        return LocalBlobBackend(Path(url.removeprefix("file://")))
    try:
        # Imported here: boto3 is an optional extra, needed only for s3:// stores.
        from maas.registry.blobstore_s3 import S3BlobBackend
    except ImportError as exc:
        raise UnavailableError(
            f"MAAS_ARTIFACT_URL={url} needs the S3 client: pip install 'maas[s3]' ({exc})"
        ) from exc
    return S3BlobBackend.from_settings(settings)


def open_store(settings: Settings, *, master_key: bytes | None = None) -> ArtifactStore:
    """The artifact store of ``settings``; ``master_key`` defaults to the configured one."""
    key = settings.master_key_bytes if master_key is None else master_key
    return ArtifactStore(open_backend(settings), master_key=key)


class ArtifactStore:
    def __init__(
        self,
        backend: BlobBackend | Path,
        *,
        master_key: bytes | None = None,
        chunk_size: int = crypto.DEFAULT_CHUNK_SIZE,
    ) -> None:
        """A blob store on ``backend`` (a path: a local directory); with ``master_key``
        (32 bytes) new blobs are encrypted."""
        self.backend: BlobBackend = (
            LocalBlobBackend(backend) if isinstance(backend, Path) else backend
        )
        if master_key is not None:
            crypto.key_id(master_key)  # checks the length now, not at the first push
        self._master_key = master_key
        self._chunk_size = chunk_size

    @property
    def encrypts(self) -> bool:
        """Whether new blobs are stored encrypted."""
        return self._master_key is not None

    @property
    def location(self) -> str:
        return self.backend.location

    def _local(self) -> LocalBlobBackend:
        if not isinstance(self.backend, LocalBlobBackend):
            raise TypeError(f"the blobs at {self.location} are not files on this machine")
        return self.backend

    def blob_path(self, sha256: str) -> Path:
        """The file of a blob (local stores only)."""
        return self._local().path(sha256)

    def iter_blobs(self) -> Iterator[tuple[str, Path]]:
        """(name, file) of every blob (local stores only); :meth:`list_blobs` works on all."""
        return self._local().iter_paths()

    def list_blobs(self) -> Iterator[StoredBlob]:
        return self.backend.iter_stored()

    def stat(self, sha256: str) -> StoredBlob | None:
        return self.backend.stat(sha256)

    def has(self, sha256: str) -> bool:
        return self.backend.stat(sha256) is not None

    def put_stream(
        self, chunks: Iterable[bytes], on_bytes: Callable[[int], None] | None = None
    ) -> FileEntry:
        """Store a byte stream; returns its entry with an empty path."""
        fd, tmp_name = tempfile.mkstemp(dir=self.backend.staging_dir, prefix="blob-")
        tmp = Path(tmp_name)
        try:
            hasher = hashlib.sha256()
            size = 0

            def plaintext() -> Iterator[bytes]:
                # Digest and size are always those of the plaintext.
                nonlocal size
                for chunk in chunks:
                    hasher.update(chunk)
                    size += len(chunk)
                    if on_bytes is not None:
                        on_bytes(len(chunk))
                    yield chunk

            with os.fdopen(fd, "wb") as out:
                if self._master_key is None:
                    for chunk in plaintext():
                        out.write(chunk)
                else:
                    crypto.encrypt_stream(
                        plaintext(), out, self._master_key, chunk_size=self._chunk_size
                    )
            sha = hasher.hexdigest()
            if self.backend.stat(sha) is not None and not self._replaces(sha):
                # Dedupe, and restart gc's grace period so it protects the blob
                # while the push that re-uses it has not committed yet.
                self.backend.touch(sha)
                tmp.unlink()
            else:
                self.backend.store(sha, tmp)
            return FileEntry(path="", size=size, sha256=sha)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _replaces(self, sha256: str) -> bool:
        """Whether a new write replaces the stored blob rather than deduping to it.

        Only to encrypt it: content that exists as a plaintext blob, stored
        again by a store with a master key, ends up encrypted.
        """
        if not self.encrypts:
            return False
        try:
            with self.backend.open(sha256) as src:
                return not crypto.has_magic(src)
        except NotFoundError:
            return True  # collected since the stat: store it again

    def put_file(self, path: Path, on_bytes: Callable[[int], None] | None = None) -> FileEntry:
        with path.open("rb") as src:
            return self.put_stream(iter(lambda: src.read(CHUNK), b""), on_bytes)

    def _decrypting(self, sha256: str, src: BinaryIO) -> Iterator[bytes] | None:
        """The plaintext chunks of an encrypted blob; None when ``src`` is plaintext.

        A wrong or missing master key, or a damaged header, raises
        :class:`~maas.crypto.DecryptionError` here, before any byte
        is read -- unless the raw bytes hash to the blob's name: then it is a
        plaintext blob that merely begins with the magic bytes.
        """
        if not crypto.has_magic(src):
            return None
        label = f"blob sha256:{sha256}"
        try:
            if self._master_key is None:
                raise crypto.DecryptionError(
                    f"{label} is encrypted but no master key is configured "
                    "(set MAAS_MASTER_KEY or MAAS_MASTER_KEY_FILE)"
                )
            return crypto.decrypt_stream(src, self._master_key, label=label)
        except crypto.DecryptionError:
            if _raw_digest_matches(src, sha256):
                return None
            raise

    def open_verified(self, sha256: str) -> Iterator[bytes]:
        """Yield a blob's plaintext, raising IntegrityError at the end if it changed.

        Encrypted blobs are also authenticated chunk by chunk as they stream.
        """
        try:
            source = self.backend.open(sha256)
        except NotFoundError:
            raise IntegrityError(f"blob sha256:{sha256} is missing from the store") from None
        hasher = hashlib.sha256()
        with source as src:
            chunks = self._decrypting(sha256, src)
            if chunks is None:
                chunks = iter(lambda: src.read(CHUNK), b"")
            for chunk in chunks:
                hasher.update(chunk)
                yield chunk
        if hasher.hexdigest() != sha256:
            raise IntegrityError(f"blob sha256:{sha256} is corrupted (digest mismatch)")

    def verify(self, sha256: str) -> None:
        for _ in self.open_verified(sha256):
            pass

    def materialize(self, manifest: Manifest, dest: Path) -> Path:
        """Write a version's files under ``dest`` (created atomically), verifying digests.

        The tree is built in a sibling temporary directory and renamed into
        place, so ``dest`` either holds the complete, verified version or does
        not exist.
        """
        if dest.is_dir():
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".materialize-"))
        try:
            for entry in manifest.files:
                target = staging / entry.path
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("wb") as out:
                    for chunk in self.open_verified(entry.sha256):
                        out.write(chunk)
            try:
                os.replace(staging, dest)
            except OSError:
                if not dest.is_dir():
                    raise
                # Another process materialized the same digest first.
                shutil.rmtree(staging, ignore_errors=True)
            return dest
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def collect(self, referenced: set[str], *, grace_seconds: float) -> GcOutcome:
        """Delete blobs not in ``referenced`` and not stored or reused within ``grace_seconds``.

        The grace period protects blobs written (or found already stored) by a
        push that has not committed its registry row yet. Each candidate is
        looked at again just before it goes, so a push that reused it while
        the listing ran keeps it. Leftovers of crashed writers older than the
        grace period go too.
        """
        cutoff = self.backend.clock() - grace_seconds
        removed: list[StoredBlob] = []
        kept = 0
        for blob in list(self.backend.iter_stored()):
            if blob.sha256 in referenced or blob.modified > cutoff:
                kept += 1
                continue
            current = self.backend.stat(blob.sha256)
            if current is None:
                continue
            if current.modified > cutoff:
                kept += 1
                continue
            self.backend.delete(blob.sha256)
            removed.append(current)
        self.backend.remove_stale_uploads(cutoff)
        return GcOutcome(removed=removed, kept=kept)

    def gc(self, referenced: set[str], *, grace_seconds: float) -> list[str]:
        """:meth:`collect`, returning the names of the removed blobs."""
        outcome = self.collect(referenced, grace_seconds=grace_seconds)
        return [blob.sha256 for blob in outcome.removed]

    def get(self, sha256: str) -> BinaryIO:
        """Open a blob's plaintext for reading (decrypted and authenticated as read)."""
        src = self.backend.open(sha256)
        try:
            chunks = self._decrypting(sha256, src)
        except BaseException:
            src.close()
            raise
        if chunks is None:
            return src
        return io.BufferedReader(ChunkReader(chunks, src), CHUNK)

    def size_matches(self, sha256: str, size: int) -> bool:
        """Whether the stored blob's size fits a plaintext of ``size`` bytes (cheap check)."""
        stored = self.backend.stat(sha256)
        if stored is None:
            return False
        if stored.size == size:
            return True
        with self.backend.open(sha256) as src:
            try:
                header = crypto.read_header(src) if crypto.has_magic(src) else None
            except crypto.DecryptionError:
                return False
        return header is not None and stored.size == crypto.encrypted_size(size, header.chunk_size)

    def rewrap_keys(self, new_master_key: bytes) -> RewrapResult:
        """Re-wrap every encrypted blob's data key under ``new_master_key``.

        Only each blob's key slot is rewritten, never its content. Safe to
        run again after an interruption: blobs already under the new key are
        counted, not touched. Blobs written concurrently with the old key
        after the scan passed them need a second run.
        """
        if self._master_key is None:
            raise InvalidRequestError(
                "no master key configured: set MAAS_MASTER_KEY or MAAS_MASTER_KEY_FILE to the "
                "key the blobs are encrypted with"
            )
        rewrapped = already = plaintext = 0
        for sha in sorted(blob.sha256 for blob in self.backend.iter_stored()):
            with self.backend.open(sha) as src:
                if not crypto.has_magic(src):
                    plaintext += 1
                    continue
            try:
                done = self.backend.rewrap(sha, self._master_key, new_master_key)
            except crypto.DecryptionError:
                with self.backend.open(sha) as src:
                    if not _raw_digest_matches(src, sha):
                        raise
                plaintext += 1  # a plaintext blob that begins with the magic bytes
                continue
            if done:
                rewrapped += 1
            else:
                already += 1
        return RewrapResult(rewrapped=rewrapped, already=already, plaintext=plaintext)
