"""The local cache of materialized versions: the directories runtimes load models from.

Runtimes read a model as files in a directory (transformers, ONNX Runtime and
llama.cpp all take a path), so every version that is loaded or pulled is
first materialized under ``$MAAS_HOME/cache/<manifest digest hex>``, its
files written from the blob store and verified there. With an object store
behind it, this is the read-through cache that spares a download per load.

Bounded by ``MAAS_CACHE_MAX_BYTES``: after a miss, the least recently used
versions are removed until the cache fits. "Used" is the directory's mtime,
refreshed on every hit, so recency is shared by every process on the
machine. Two rules make eviction safe:

- the version just materialized, and every version used within the last
  ``keep_recent_seconds``, stay even when the cache is over its bound: a
  process that asked for a directory is still reading it (loading a model
  can take minutes), and pulling it out from under the load would fail it.
  A loaded model needs its files no longer: weights are in memory or
  mapped, and a mapping outlives the file's name.
- an evicted directory is first renamed to a hidden name, then removed, so
  another process sees it complete or not at all.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from maas.registry.artifacts import ArtifactStore, Manifest

KEEP_RECENT_SECONDS = 600.0


@dataclass(frozen=True, slots=True)
class CachedVersion:
    path: Path
    size: int  # bytes of its files
    used: float  # seconds since the epoch


def _tree_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += (Path(root) / name).lstat().st_size
    return total


class VersionCache:
    """Materialized versions under ``root``, one directory per manifest digest."""

    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int | None = None,
        keep_recent_seconds: float = KEEP_RECENT_SECONDS,
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.keep_recent_seconds = keep_recent_seconds

    def path_for(self, manifest: Manifest) -> Path:
        return self.root / manifest.digest.removeprefix("sha256:")

    def get(self, manifest: Manifest, store: ArtifactStore) -> Path:
        """The directory holding ``manifest``'s verified files, materialized on a miss."""
        dest = self.path_for(manifest)
        if dest.is_dir() and self._mark_used(dest):
            return dest
        store.materialize(manifest, dest)
        self._mark_used(dest)
        self.evict(keep=dest)
        return dest

    @staticmethod
    def _mark_used(path: Path) -> bool:
        """Refresh ``path``'s recency; False when it was evicted meanwhile."""
        try:
            os.utime(path)
        except FileNotFoundError:
            return False
        except PermissionError:
            pass  # a cache another user owns: served, its recency not recorded
        return True

    def entries(self) -> list[CachedVersion]:
        """Every cached version, least recently used first."""
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.iterdir():
            if path.name.startswith("."):
                continue  # being materialized or evicted
            try:
                used = path.stat().st_mtime
            except FileNotFoundError:
                continue
            found.append(CachedVersion(path, _tree_size(path), used))
        return sorted(found, key=lambda entry: entry.used)

    def size_bytes(self) -> int:
        return sum(entry.size for entry in self.entries())

    def evict(self, *, keep: Path | None = None) -> list[Path]:
        """Remove least recently used versions until the cache fits its bound."""
        if self.max_bytes is None:
            return []
        entries = self.entries()
        total = sum(entry.size for entry in entries)
        recent = time.time() - self.keep_recent_seconds
        removed = []
        for entry in entries:
            if total <= self.max_bytes:
                break
            if entry.path == keep or entry.used > recent or self._used_since(entry.path, recent):
                continue
            if self._remove(entry.path):
                removed.append(entry.path)
                total -= entry.size
        return removed

    def retain(self, digests: set[str]) -> None:
        """Remove cached versions whose digest (hex) is not in ``digests`` (deleted versions)."""
        for entry in self.entries():
            if entry.path.name not in digests:
                self._remove(entry.path)

    @staticmethod
    def _used_since(path: Path, moment: float) -> bool:
        """Looked at again just before removal: a process may have used it since the listing."""
        try:
            return path.stat().st_mtime > moment
        except FileNotFoundError:
            return True  # gone already: nothing to remove

    def _remove(self, path: Path) -> bool:
        hidden = Path(tempfile.mkdtemp(dir=self.root, prefix=".evict-"))
        try:
            os.replace(path, hidden / path.name)
        except FileNotFoundError:
            shutil.rmtree(hidden, ignore_errors=True)
            return False  # another process removed it first
        shutil.rmtree(hidden, ignore_errors=True)
        return True
