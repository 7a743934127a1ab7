"""The registry's record that its artifact store is encrypted.

Whether a process encrypts is its own setting (a master key or none), but
the store is shared: by the server, the CLI, job workers and, with a shared
database and object store, other instances. Without a record, a CLI push
run without the key wrote plaintext blobs into an encrypted store and nobody
noticed. So the first process that opens the registry with a master key
writes a row into ``store_flags``, and from then on every write of blobs
without a master key is refused with a message naming the setting. Reads
are not refused: plaintext blobs (stored before encryption was turned on)
stay readable without the key, and encrypted ones fail on their own with
*"encrypted but no master key is configured"*.

The mark is never removed by maas: turning encryption off for a store is a
decision to take by hand (delete the row), not a side effect of a missing
variable.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError as SAIntegrityError

from maas.errors import UnavailableError
from maas.registry.db import Database
from maas.registry.models import StoreFlagRow

ENCRYPTION = "encryption"


class MasterKeyRequiredError(UnavailableError):
    """A write of blobs into an encrypted store by a process without the master key."""

    code = "master_key_required"


def encryption_mark(db: Database) -> str | None:
    """The master key id recorded when the store was marked encrypted, or None."""
    with db.read() as s:
        value: str | None = s.scalar(
            select(StoreFlagRow.value).where(StoreFlagRow.name == ENCRYPTION)
        )
        return value


def mark_encrypted(db: Database, key_id: str) -> None:
    """Record that the store is encrypted (once; later calls leave the first record)."""
    if encryption_mark(db) is not None:
        return
    try:
        with db.write() as s:
            if s.get(StoreFlagRow, ENCRYPTION) is None:
                s.add(StoreFlagRow(name=ENCRYPTION, value=key_id))
    except SAIntegrityError:
        pass  # another process marked it between the read and the insert: same outcome


def check_writable(db: Database, key_id: str | None) -> None:
    """Before storing blobs: mark the store when this process encrypts (``key_id``),
    refuse when it does not and the store is marked."""
    if key_id is not None:
        mark_encrypted(db, key_id)
        return
    mark = encryption_mark(db)
    if mark is not None:
        raise MasterKeyRequiredError(
            "the artifact store is encrypted (marked so in the registry database by master "
            f"key id {mark}), but this process has no master key and would store plaintext: "
            "set MAAS_MASTER_KEY_FILE (or MAAS_MASTER_KEY) to the store's master key"
        )
