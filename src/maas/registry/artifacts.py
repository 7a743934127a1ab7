"""Content-addressed blob store and version manifests.

Layout: ``<root>/sha256/<first two hex>/<full hex>``. Every write goes to a
temporary file in ``<root>/tmp`` (same filesystem), is fsynced, then renamed
into place, so a crash never leaves a partial blob under a real name. A blob
is only ever referenced by a registry row after it exists in full.

Encryption at rest (see ``docs/encryption.md``): a store given a master key
writes every new blob encrypted (:mod:`maas.security.crypto`). A blob's name,
digest and size stay those of its *plaintext*, so content addresses, manifests
and dedupe do not depend on encryption. Reads tell the two kinds apart by the
magic bytes at the start, so a store that gained a master key later still
reads its older plaintext blobs; storing content that exists as a plaintext
blob replaces that blob with an encrypted one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from maas.errors import IntegrityError, InvalidRequestError, NotFoundError
from maas.security import crypto

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

CHUNK = 1024 * 1024
HEX_LEN = 64


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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _raw_digest_matches(src: BinaryIO, sha256: str) -> bool:
    src.seek(0)
    hasher = hashlib.sha256()
    while chunk := src.read(CHUNK):
        hasher.update(chunk)
    src.seek(0)
    return hasher.hexdigest() == sha256


class _ChunkReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks (the plaintext of a blob)."""

    def __init__(self, chunks: Iterator[bytes], source: BinaryIO) -> None:
        self._chunks = chunks
        self._source = source
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = chunk
        view = memoryview(buffer).cast("B")
        size = min(len(view), len(self._pending))
        view[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size

    def close(self) -> None:
        if not self.closed:
            self._source.close()
        super().close()


class ArtifactStore:
    def __init__(
        self,
        root: Path,
        *,
        master_key: bytes | None = None,
        chunk_size: int = crypto.DEFAULT_CHUNK_SIZE,
    ) -> None:
        """A blob store under ``root``; with ``master_key`` (32 bytes) new blobs are encrypted."""
        self.root = root
        self._blobs = root / "sha256"
        self._tmp = root / "tmp"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        if master_key is not None:
            crypto.key_id(master_key)  # checks the length now, not at the first push
        self._master_key = master_key
        self._chunk_size = chunk_size

    @property
    def encrypts(self) -> bool:
        """Whether new blobs are stored encrypted."""
        return self._master_key is not None

    def blob_path(self, sha256: str) -> Path:
        if len(sha256) != HEX_LEN or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self._blobs / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()

    def put_stream(
        self, chunks: Iterable[bytes], on_bytes: Callable[[int], None] | None = None
    ) -> FileEntry:
        """Store a byte stream; returns its entry with an empty path."""
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix="blob-")
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
                out.flush()
                os.fsync(out.fileno())
            sha = hasher.hexdigest()
            final = self.blob_path(sha)
            if final.exists() and not self._replaces(final):
                # Dedupe, and refresh mtime so gc's grace period protects the
                # blob while the push that re-uses it has not committed yet.
                os.utime(final)
                tmp.unlink()
            else:
                final.parent.mkdir(exist_ok=True)
                os.replace(tmp, final)
                _fsync_dir(final.parent)
            return FileEntry(path="", size=size, sha256=sha)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _replaces(self, existing: Path) -> bool:
        """Whether a new write replaces ``existing`` rather than deduping to it.

        Only to encrypt it: content that exists as a plaintext blob, stored
        again by a store with a master key, ends up encrypted.
        """
        return self.encrypts and not crypto.looks_encrypted(existing)

    def put_file(self, path: Path, on_bytes: Callable[[int], None] | None = None) -> FileEntry:
        with path.open("rb") as src:
            return self.put_stream(iter(lambda: src.read(CHUNK), b""), on_bytes)

    def _decrypting(self, sha256: str, src: BinaryIO) -> Iterator[bytes] | None:
        """The plaintext chunks of an encrypted blob; None when ``src`` is plaintext.

        A wrong or missing master key, or a damaged header, raises
        :class:`~maas.security.crypto.DecryptionError` here, before any byte
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
        path = self.blob_path(sha256)
        if not path.is_file():
            raise IntegrityError(f"blob sha256:{sha256} is missing from the store")
        hasher = hashlib.sha256()
        with path.open("rb") as src:
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

    def iter_blobs(self) -> Iterator[tuple[str, Path]]:
        for shard in self._blobs.iterdir():
            if shard.is_dir():
                for blob in shard.iterdir():
                    yield blob.name, blob

    def gc(self, referenced: set[str], *, grace_seconds: float) -> list[str]:
        """Delete blobs not in ``referenced`` and older than ``grace_seconds``.

        The grace period protects blobs written by a push that has not
        committed its registry row yet. Stale temporary files (from crashed
        writers) older than the grace period go too.
        """
        cutoff = time.time() - grace_seconds
        removed: list[str] = []
        for sha, path in list(self.iter_blobs()):
            if sha in referenced:
                continue
            try:
                if path.stat().st_mtime <= cutoff:
                    path.unlink()
                    removed.append(sha)
            except FileNotFoundError:
                continue
        for tmp in self._tmp.iterdir():
            try:
                if tmp.stat().st_mtime <= cutoff:
                    if tmp.is_dir():
                        shutil.rmtree(tmp, ignore_errors=True)
                    else:
                        tmp.unlink()
            except FileNotFoundError:
                continue
        return removed

    def get(self, sha256: str) -> BinaryIO:
        """Open a blob's plaintext for reading (decrypted and authenticated as read)."""
        path = self.blob_path(sha256)
        if not path.is_file():
            raise NotFoundError(f"blob sha256:{sha256} not found")
        src = path.open("rb")
        try:
            chunks = self._decrypting(sha256, src)
        except BaseException:
            src.close()
            raise
        if chunks is None:
            return src
        return io.BufferedReader(_ChunkReader(chunks, src), CHUNK)

    def size_matches(self, sha256: str, size: int) -> bool:
        """Whether the stored file's size fits a plaintext of ``size`` bytes (cheap check)."""
        with self.blob_path(sha256).open("rb") as src:
            stored = os.fstat(src.fileno()).st_size
            if stored == size:
                return True
            try:
                header = crypto.read_header(src) if crypto.has_magic(src) else None
            except crypto.DecryptionError:
                return False
        return header is not None and stored == crypto.encrypted_size(size, header.chunk_size)

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
        for sha, path in sorted(self.iter_blobs()):
            if not crypto.looks_encrypted(path):
                plaintext += 1
                continue
            try:
                done = crypto.rewrap(
                    path, self._master_key, new_master_key, label=f"blob sha256:{sha}"
                )
            except crypto.DecryptionError:
                with path.open("rb") as src:
                    if not _raw_digest_matches(src, sha):
                        raise
                plaintext += 1  # a plaintext blob that begins with the magic bytes
                continue
            if done:
                rewrapped += 1
            else:
                already += 1
        return RewrapResult(rewrapped=rewrapped, already=already, plaintext=plaintext)
