"""Blobs in a local directory: ``<root>/sha256/<first two hex>/<full hex>``.

A blob is built in ``<root>/tmp`` (the same filesystem), fsynced, then
renamed into place and the directory fsynced, so a crash never leaves a
partial blob under a real name. A blob's mtime is its ``modified``: reuse
by a later push refreshes it (:meth:`LocalBlobBackend.touch`).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from maas import crypto
from maas.errors import NotFoundError
from maas.registry.blobstore import StoredBlob, check_sha256


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBlobBackend:
    """The default backend: a directory on this machine."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._blobs = root / "sha256"
        self._tmp = root / "tmp"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)

    @property
    def location(self) -> str:
        return str(self.root)

    @property
    def staging_dir(self) -> Path:
        return self._tmp

    def path(self, sha256: str) -> Path:
        """The file of blob ``sha256`` (which may not exist)."""
        check_sha256(sha256)
        return self._blobs / sha256[:2] / sha256

    def stat(self, sha256: str) -> StoredBlob | None:
        try:
            st = self.path(sha256).stat()
        except FileNotFoundError:
            return None
        return StoredBlob(sha256, st.st_size, st.st_mtime)

    def open(self, sha256: str) -> BinaryIO:
        try:
            return self.path(sha256).open("rb")
        except FileNotFoundError:
            raise NotFoundError(f"blob sha256:{sha256} not found") from None

    def store(self, sha256: str, staged: Path) -> None:
        final = self.path(sha256)
        try:
            # Data first, then the name: fsync through a fresh descriptor flushes
            # what the writer wrote through its own.
            with staged.open("rb") as written:
                os.fsync(written.fileno())
            final.parent.mkdir(exist_ok=True)
            os.replace(staged, final)
            _fsync_dir(final.parent)
        finally:
            staged.unlink(missing_ok=True)

    def touch(self, sha256: str) -> None:
        os.utime(self.path(sha256))

    def iter_paths(self) -> Iterator[tuple[str, Path]]:
        """(name, file) of every blob: for tools that work on the files themselves."""
        for shard in self._blobs.iterdir():
            if shard.is_dir():
                for blob in shard.iterdir():
                    yield blob.name, blob

    def iter_stored(self) -> Iterator[StoredBlob]:
        for sha, path in self.iter_paths():
            try:
                st = path.stat()
            except FileNotFoundError:
                continue  # deleted while listing
            yield StoredBlob(sha, st.st_size, st.st_mtime)

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def clock(self) -> float:
        return time.time()

    def remove_stale_uploads(self, cutoff: float) -> None:
        for tmp in self._tmp.iterdir():
            try:
                if tmp.stat().st_mtime <= cutoff:
                    if tmp.is_dir():
                        shutil.rmtree(tmp, ignore_errors=True)
                    else:
                        tmp.unlink()
            except FileNotFoundError:
                continue

    def rewrap(self, sha256: str, old_master_key: bytes, new_master_key: bytes) -> bool:
        # In place, two key slots, fsync between: see maas.crypto.
        return crypto.rewrap(
            self.path(sha256), old_master_key, new_master_key, label=f"blob sha256:{sha256}"
        )
