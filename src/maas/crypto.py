"""Encryption at rest: streaming, chunked AES-256-GCM with a data key per blob.

Each encrypted file gets a fresh random 256-bit *data key*. The data key
seals the content; the operator's 256-bit *master key* only seals (wraps)
the data key. Rotating the master key therefore rewrites one 76-byte key
slot per file and never the content.

File format, version 1 (integers big-endian)::

    fixed part, 20 bytes
      0  8  magic            b"\\x89MAASENC"
      8  2  format version   1
     10  2  algorithm        1 = AES-256-GCM
     12  4  chunk size       plaintext bytes per chunk (1 MiB by default)
     16  4  nonce prefix     random, per file
    key slot 0, 76 bytes; key slot 1, 76 bytes
      +0  16  key id         which master key wrapped this slot; zeros: empty
      +16 12  wrap nonce     random
      +28 48  wrapped key    AES-GCM(KEK, data key) = 32 bytes + 16-byte tag,
                             associated data = fixed part + key id
    chunks (172 + ...)
      each: ciphertext of chunk_size plaintext bytes (the last: 0..chunk_size) + 16-byte tag
      nonce            = nonce prefix (4) || chunk index (8)
      associated data  = fixed part || chunk index (8) || final flag (1)

Every chunk but the last holds exactly ``chunk size`` bytes; the last is
sealed with the final flag set, and an empty file still has one (empty)
final chunk. So a file cut at a chunk boundary, chunks swapped or
reordered, bytes appended, or any header field changed all fail
authentication. The KEK and the key id are derived from the master key
with HMAC-SHA256 under distinct labels, so the key id identifies a master
key without revealing it. Memory stays flat: one or two chunks are held at
a time, whatever the file size.

Why two fixed-size key slots rewritten in place, rather than a sidecar
``<blob>.key`` file replaced by rename: a blob stays one self-describing
file, so dedupe, gc, ``iter_blobs`` and copying a store need no knowledge
of a second file, and no crash can separate a blob from its key (a blob
whose sidecar rename was lost would be unreadable). In-place writes are
not atomic, so :func:`rewrap` never overwrites the slot that holds the
valid wrap: it writes the new wrap into the other slot, fsyncs, and only
then clears the old slot and fsyncs again. A crash at any point leaves at
least one slot that authenticates under the old or the new master key,
and running the rotation again finishes the job.

This module depends only on the standard library, ``cryptography`` and
``maas.errors``; callers give it master keys as 32 raw bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import secrets
import struct
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from maas.errors import IntegrityError

MAGIC = b"\x89MAASENC"
FORMAT_VERSION = 1
ALGORITHM_AES_256_GCM = 1
KEY_SIZE = 32
TAG_SIZE = 16
KEY_ID_SIZE = 16
DEFAULT_CHUNK_SIZE = 1024 * 1024
# A bound on the chunk size read from a header, so a damaged header cannot
# make a reader allocate gigabytes before authentication fails.
MAX_CHUNK_SIZE = 64 * 1024 * 1024

_FIXED = struct.Struct(">8sHHI4s")  # magic, version, algorithm, chunk size, nonce prefix
_SLOT = struct.Struct(">16s12s48s")  # key id, wrap nonce, wrapped data key + tag
_INDEX = struct.Struct(">Q")
SLOT_COUNT = 2
HEADER_SIZE = _FIXED.size + SLOT_COUNT * _SLOT.size
_EMPTY_SLOT = bytes(_SLOT.size)
_NO_KEY_ID = bytes(KEY_ID_SIZE)


class DecryptionError(IntegrityError):
    """Encrypted bytes do not authenticate: modified, truncated, or not ours."""

    code = "decryption_error"


class WrongMasterKeyError(DecryptionError):
    """The file's data key was wrapped by a different master key."""

    code = "wrong_master_key"


@dataclass(frozen=True, slots=True)
class KeySlot:
    key_id: bytes
    nonce: bytes
    wrapped: bytes

    @property
    def empty(self) -> bool:
        return self.key_id == _NO_KEY_ID


@dataclass(frozen=True, slots=True)
class Header:
    """The parsed header of an encrypted file."""

    fixed: bytes  # the raw fixed part: associated data of every seal in the file
    version: int
    chunk_size: int
    nonce_prefix: bytes
    slots: tuple[KeySlot, ...]


def key_id(master_key: bytes) -> str:
    """A public identifier of a master key (hex), safe to print and log."""
    return _key_id(_checked(master_key)).hex()


def encrypted_size(plaintext_size: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """The size of the encrypted file holding ``plaintext_size`` bytes."""
    chunks = max(1, -(-plaintext_size // chunk_size))
    return HEADER_SIZE + plaintext_size + chunks * TAG_SIZE


def has_magic(src: BinaryIO) -> bool:
    """Whether ``src`` (positioned at its start) begins like an encrypted file.

    Leaves the position at the start.
    """
    start = src.read(len(MAGIC))
    src.seek(0)
    return start == MAGIC


def looks_encrypted(path: Path) -> bool:
    with path.open("rb") as src:
        return has_magic(src)


def encrypt_stream(
    chunks: Iterable[bytes],
    out: BinaryIO,
    master_key: bytes,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> int:
    """Encrypt a byte stream into ``out``; returns the number of bytes written.

    The input may arrive in pieces of any size; it is re-cut into chunks of
    ``chunk_size``. Held back: at most one chunk plus the piece being cut,
    because a chunk is sealed only once it is known whether more bytes
    follow it (the last chunk is sealed as final).
    """
    kek = _kek(_checked(master_key))
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk size must be 1..{MAX_CHUNK_SIZE}, not {chunk_size}")
    data_key = secrets.token_bytes(KEY_SIZE)
    nonce_prefix = secrets.token_bytes(4)
    fixed = _FIXED.pack(MAGIC, FORMAT_VERSION, ALGORITHM_AES_256_GCM, chunk_size, nonce_prefix)
    slot = _wrap(fixed, data_key, kek, _key_id(master_key))
    written = out.write(fixed + slot + _EMPTY_SLOT)
    aead = AESGCM(data_key)
    index = 0
    pending: deque[memoryview] = deque()
    buffered = 0
    for piece in chunks:
        if not piece:
            continue
        # bytes are immutable, so holding a view of them is safe and saves a
        # copy; a mutable buffer may be reused by its producer: copy it.
        pending.append(memoryview(piece if isinstance(piece, bytes) else bytes(piece)))
        buffered += len(piece)
        while buffered > chunk_size:
            # More bytes follow this chunk, so it is not the last.
            chunk = _take(pending, chunk_size)
            written += out.write(_seal(aead, fixed, index, chunk, final=False))
            buffered -= chunk_size
            index += 1
    written += out.write(_seal(aead, fixed, index, _take(pending, buffered), final=True))
    return written


def read_header(src: BinaryIO, *, label: str = "file") -> Header:
    """Parse the header at the start of ``src``, leaving ``src`` after it."""
    raw = src.read(HEADER_SIZE)
    if len(raw) < HEADER_SIZE or not raw.startswith(MAGIC):
        raise DecryptionError(f"{label} is not an encrypted maas file or its header is truncated")
    fixed = raw[: _FIXED.size]
    _, version, algorithm, chunk_size, nonce_prefix = _FIXED.unpack(fixed)
    if version != FORMAT_VERSION:
        raise DecryptionError(
            f"{label} uses encryption format version {version}; this maas reads version "
            f"{FORMAT_VERSION}"
        )
    if algorithm != ALGORITHM_AES_256_GCM or not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise DecryptionError(f"{label}: encryption header is corrupted")
    slots = tuple(
        KeySlot(*_SLOT.unpack_from(raw, _FIXED.size + i * _SLOT.size)) for i in range(SLOT_COUNT)
    )
    return Header(fixed, version, chunk_size, nonce_prefix, slots)


def decrypt_stream(src: BinaryIO, master_key: bytes, *, label: str = "file") -> Iterator[bytes]:
    """Return an iterator over the plaintext chunks of the encrypted ``src``.

    The header is read and the data key unwrapped right away, so a wrong key
    or a damaged header raises here, before any chunk is read. Each chunk is
    authenticated before it is yielded; a damaged, truncated or reordered
    file raises :class:`DecryptionError` at the first bad chunk.
    """
    header = read_header(src, label=label)
    _, data_key = _unwrap(header, _checked(master_key), label)
    return _open_chunks(src, header, AESGCM(data_key), label)


def decrypt_file(path: Path, master_key: bytes, *, label: str | None = None) -> Iterator[bytes]:
    """Yield the plaintext of the encrypted file at ``path``, chunk by chunk."""
    with path.open("rb") as src:
        yield from decrypt_stream(src, master_key, label=label or str(path))


def rewrap(
    path: Path, old_master_key: bytes, new_master_key: bytes, *, label: str | None = None
) -> bool:
    """Re-wrap the file's data key under ``new_master_key``, in place.

    Only the key slots change; the content is not rewritten and the file's
    modification time is kept. Returns False when the file already is under
    the new key alone (a rotation that is being run again). See the module
    docstring for why a crash part-way is safe.
    """
    _checked(old_master_key)
    new_id = _key_id(_checked(new_master_key))
    name = label or str(path)
    fd = os.open(path, os.O_RDWR)
    try:
        stat = os.fstat(fd)
        with os.fdopen(os.dup(fd), "rb") as src:
            header = read_header(src, label=name)
        try:
            index, data_key = _unwrap(header, old_master_key, name)
        except WrongMasterKeyError:
            if _slot_for(header, new_master_key) is not None:
                return False
            raise
        target = (index + 1) % SLOT_COUNT
        new_slot = _wrap(header.fixed, data_key, _kek(new_master_key), new_id)
        os.pwrite(fd, new_slot, _slot_offset(target))
        os.fsync(fd)
        os.pwrite(fd, _EMPTY_SLOT, _slot_offset(index))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return True


def rewrapped_header(
    raw: bytes, old_master_key: bytes, new_master_key: bytes, *, label: str = "file"
) -> bytes | None:
    """The header ``raw`` (a file's first :data:`HEADER_SIZE` bytes) with its data key
    wrapped by ``new_master_key`` alone; None when it already is.

    For stores that replace a whole file atomically (an object store) instead of
    writing slots in place: the new wrap goes into the other slot and the old
    slot is cleared in the same header, as :func:`rewrap` ends up doing.
    """
    _checked(old_master_key)
    new_id = _key_id(_checked(new_master_key))
    header = read_header(io.BytesIO(raw), label=label)
    try:
        index, data_key = _unwrap(header, old_master_key, label)
    except WrongMasterKeyError:
        if _slot_for(header, new_master_key) is not None:
            return None
        raise
    slots = [_EMPTY_SLOT] * SLOT_COUNT
    slots[(index + 1) % SLOT_COUNT] = _wrap(header.fixed, data_key, _kek(new_master_key), new_id)
    return header.fixed + b"".join(slots)


# ---------------------------------------------------------------- internals


def _checked(master_key: bytes) -> bytes:
    if len(master_key) != KEY_SIZE:
        raise ValueError(f"a master key is {KEY_SIZE} bytes, not {len(master_key)}")
    return master_key


def _derive(master_key: bytes, purpose: bytes) -> bytes:
    return hmac.new(master_key, b"maas/blob-encryption/v1/" + purpose, hashlib.sha256).digest()


def _kek(master_key: bytes) -> bytes:
    return _derive(master_key, b"key-encryption-key")


def _key_id(master_key: bytes) -> bytes:
    return _derive(master_key, b"key-id")[:KEY_ID_SIZE]


def _slot_offset(index: int) -> int:
    return _FIXED.size + index * _SLOT.size


def _wrap(fixed: bytes, data_key: bytes, kek: bytes, kid: bytes) -> bytes:
    nonce = secrets.token_bytes(12)
    wrapped = AESGCM(kek).encrypt(nonce, data_key, fixed + kid)
    return _SLOT.pack(kid, nonce, wrapped)


def _slot_for(header: Header, master_key: bytes) -> tuple[int, bytes] | None:
    """The (slot index, data key) that ``master_key`` unwraps, if any."""
    kid = _key_id(master_key)
    kek = _kek(master_key)
    for index, slot in enumerate(header.slots):
        if slot.empty or not hmac.compare_digest(slot.key_id, kid):
            continue
        try:
            return index, AESGCM(kek).decrypt(slot.nonce, slot.wrapped, header.fixed + kid)
        except InvalidTag:
            continue
    return None


def _unwrap(header: Header, master_key: bytes, label: str) -> tuple[int, bytes]:
    found = _slot_for(header, master_key)
    if found is not None:
        return found
    kid = _key_id(master_key)
    sealed = [slot.key_id for slot in header.slots if not slot.empty]
    if any(hmac.compare_digest(s, kid) for s in sealed):
        raise DecryptionError(
            f"{label}: encryption header is corrupted or was tampered with "
            "(its data key does not authenticate under the master key)"
        )
    sealed_ids = " or ".join(s.hex() for s in sealed) or "(none)"
    raise WrongMasterKeyError(
        f"wrong master key for {label}: it is encrypted under master key id {sealed_ids}, "
        f"the configured master key has id {kid.hex()}"
    )


def _chunk_nonce_and_aad(fixed: bytes, index: int, *, final: bool) -> tuple[bytes, bytes]:
    packed = _INDEX.pack(index)
    # fixed[16:20] is the nonce prefix; see the format in the module docstring.
    return fixed[16:20] + packed, fixed + packed + (b"\x01" if final else b"\x00")


def _take(pending: deque[memoryview], size: int) -> memoryview | bytes:
    """Remove and return the first ``size`` bytes of ``pending`` (copied only if split)."""
    if not size:
        return b""
    head = pending[0]
    if len(head) >= size:
        if len(head) == size:
            pending.popleft()
        else:
            pending[0] = head[size:]
        return head[:size]
    parts = []
    while size:
        head = pending.popleft()
        if len(head) > size:
            pending.appendleft(head[size:])
            head = head[:size]
        parts.append(head)
        size -= len(head)
    return b"".join(parts)


def _seal(
    aead: AESGCM, fixed: bytes, index: int, plaintext: memoryview | bytes, *, final: bool
) -> bytes:
    nonce, aad = _chunk_nonce_and_aad(fixed, index, final=final)
    return aead.encrypt(nonce, plaintext, aad)


def _read_full(src: BinaryIO, size: int) -> bytes:
    """Read ``size`` bytes, fewer only at the end of the file."""
    data = src.read(size)
    while len(data) < size:
        more = src.read(size - len(data))
        if not more:
            break
        data += more
    return data


def _open_chunks(src: BinaryIO, header: Header, aead: AESGCM, label: str) -> Iterator[bytes]:
    record = header.chunk_size + TAG_SIZE
    index = 0
    current = _read_full(src, record)
    while True:
        # A full record may still be the last one: look one record ahead.
        following = _read_full(src, record) if len(current) == record else b""
        final = not following
        nonce, aad = _chunk_nonce_and_aad(header.fixed, index, final=final)
        try:
            plaintext = aead.decrypt(nonce, current, aad)
        except InvalidTag as exc:
            raise DecryptionError(
                f"{label}: chunk {index} does not authenticate (the file was modified, "
                "truncated, or its chunks reordered)"
            ) from exc
        if plaintext:
            yield plaintext
        if final:
            return
        current = following
        index += 1
