"""Content-addressed blob store and version manifests.

Layout: ``<root>/sha256/<first two hex>/<full hex>``. Every write goes to a
temporary file in ``<root>/tmp`` (same filesystem), is fsynced, then renamed
into place, so a crash never leaves a partial blob under a real name. A blob
is only ever referenced by a registry row after it exists in full.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from maas.errors import IntegrityError, NotFoundError

CHUNK = 1024 * 1024
HEX_LEN = 64


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of a version: its path relative to the version root."""

    path: str
    size: int
    sha256: str


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


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._blobs = root / "sha256"
        self._tmp = root / "tmp"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)

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
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    hasher.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                    if on_bytes is not None:
                        on_bytes(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            sha = hasher.hexdigest()
            final = self.blob_path(sha)
            if final.exists():
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

    def put_file(self, path: Path, on_bytes: Callable[[int], None] | None = None) -> FileEntry:
        with path.open("rb") as src:
            return self.put_stream(iter(lambda: src.read(CHUNK), b""), on_bytes)

    def open_verified(self, sha256: str) -> Iterator[bytes]:
        """Yield a blob's bytes, raising IntegrityError at the end if they changed."""
        path = self.blob_path(sha256)
        if not path.is_file():
            raise IntegrityError(f"blob sha256:{sha256} is missing from the store")
        hasher = hashlib.sha256()
        with path.open("rb") as src:
            while chunk := src.read(CHUNK):
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
        path = self.blob_path(sha256)
        if not path.is_file():
            raise NotFoundError(f"blob sha256:{sha256} not found")
        return path.open("rb")
