"""Where blobs rest: the storage backend behind :class:`~maas.registry.artifacts.ArtifactStore`.

A backend keeps opaque byte strings under sha256 names and knows nothing of
manifests, digests or encryption: the artifact store hashes, encrypts,
decrypts and verifies, and hands a backend only finished files to keep. Two
backends exist: a local directory (:mod:`maas.registry.blobstore_local`, the
default) and an S3-compatible bucket (:mod:`maas.registry.blobstore_s3`).

Every backend keeps the same promises, on which the store's guarantees rest:

- :meth:`BlobBackend.store` is atomic: a name holds either nothing or a
  complete blob, never part of one, whatever crashes when.
- ``modified`` of a listed blob is the last time it was stored *or reused*
  (:meth:`BlobBackend.touch`), on the clock :meth:`BlobBackend.clock` reads.
  The garbage collector keeps unreferenced blobs younger than its grace
  period, so the blobs of a push that has not committed its registry row yet
  are never collected, even when the push found them already stored.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

HEX_LEN = 64
_HEX = frozenset("0123456789abcdef")


def check_sha256(sha256: str) -> str:
    """Return ``sha256`` if it is 64 lower-case hex digits (a blob name), else ValueError.

    Names become file paths and object keys: nothing else may get through.
    """
    if len(sha256) != HEX_LEN or not _HEX.issuperset(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return sha256


class ChunkReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks; closing it closes ``source``."""

    def __init__(self, chunks: Iterator[bytes], source: BinaryIO | None = None) -> None:
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
        if not self.closed and self._source is not None:
            self._source.close()
        super().close()


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """A blob as its backend holds it."""

    sha256: str
    size: int  # bytes stored: for an encrypted blob, the size of the encrypted file
    modified: float  # seconds since the epoch: last stored or reused (gc's grace counts from it)


class BlobBackend(Protocol):
    """Byte strings under sha256 names, stored atomically."""

    @property
    def location(self) -> str:
        """Where the blobs are, for messages (a path or ``s3://bucket/prefix``)."""
        ...

    @property
    def staging_dir(self) -> Path:
        """A local directory where writers build a blob before :meth:`store` takes it."""
        ...

    def stat(self, sha256: str) -> StoredBlob | None:
        """The stored blob, or None when there is none under that name."""
        ...

    def open(self, sha256: str) -> BinaryIO:
        """The stored bytes, readable and seekable; NotFoundError when missing."""
        ...

    def store(self, sha256: str, staged: Path) -> None:
        """Keep the file ``staged`` (in :attr:`staging_dir`) as blob ``sha256``.

        Replaces a blob of that name atomically. The staged file is consumed:
        moved or uploaded, then gone, also on failure.
        """
        ...

    def touch(self, sha256: str) -> None:
        """Record that a writer reuses the blob now (dedupe), restarting gc's grace period."""
        ...

    def iter_stored(self) -> Iterator[StoredBlob]:
        """Every stored blob, in no particular order."""
        ...

    def delete(self, sha256: str) -> None:
        """Remove a blob; a missing one is not an error."""
        ...

    def clock(self) -> float:
        """The current time on the clock that ``modified`` is measured with."""
        ...

    def remove_stale_uploads(self, cutoff: float) -> None:
        """Drop the leftovers of writers that died before ``cutoff`` (temporary files,
        unfinished multipart uploads)."""
        ...

    def rewrap(self, sha256: str, old_master_key: bytes, new_master_key: bytes) -> bool:
        """Re-wrap an encrypted blob's data key under ``new_master_key``.

        Its content is unchanged. False when it already was under the new key
        alone. See :func:`maas.crypto.rewrap`.
        """
        ...
