"""Streaming a stored version back out as a tar archive."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator

from maas.registry.artifacts import ArtifactStore, Manifest

BLOCK = tarfile.BLOCKSIZE


def iter_tar(store: ArtifactStore, manifest: Manifest) -> Iterator[bytes]:
    """Yield a POSIX tar of the manifest's files without buffering any whole file.

    Each blob's digest is checked while it streams; a corrupt blob raises
    ``IntegrityError`` mid-stream rather than sending wrong bytes silently.
    """
    for entry in manifest.files:
        info = tarfile.TarInfo(entry.path)
        info.size = entry.size
        info.mode = 0o644
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        sent = 0
        for chunk in store.open_verified(entry.sha256):
            sent += len(chunk)
            yield chunk
        remainder = sent % BLOCK
        if remainder:
            yield b"\0" * (BLOCK - remainder)
    yield b"\0" * (BLOCK * 2)
