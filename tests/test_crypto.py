"""Streaming chunked AES-256-GCM: round trips, tamper detection, key rotation."""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from maas import crypto
from maas.crypto import DecryptionError, WrongMasterKeyError
from maas.errors import IntegrityError, MaasError

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
THIRD_KEY = bytes(range(2, 34))
CHUNK = 64  # small chunks so that a few hundred bytes span several of them
RECORD = CHUNK + crypto.TAG_SIZE


def seal(data: bytes, key: bytes = KEY, *, chunk_size: int = CHUNK, pieces: int = 0) -> bytes:
    out = io.BytesIO()
    step = pieces or max(1, len(data))
    parts: Iterable[bytes] = [data[i : i + step] for i in range(0, len(data), step)]
    crypto.encrypt_stream(parts, out, key, chunk_size=chunk_size)
    return out.getvalue()


def unseal(blob: bytes, key: bytes = KEY) -> bytes:
    return b"".join(crypto.decrypt_stream(io.BytesIO(blob), key, label="test blob"))


def write(tmp_path: Path, data: bytes, key: bytes = KEY) -> Path:
    path = tmp_path / "blob"
    path.write_bytes(seal(data, key))
    return path


@pytest.mark.parametrize(
    "size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5, 1000]
)
def test_round_trip_of_small_empty_and_exact_multiple_of_chunk_sizes(size: int) -> None:
    data = os.urandom(size)
    blob = seal(data)
    assert unseal(blob) == data
    assert len(blob) == crypto.encrypted_size(size, CHUNK)
    assert blob.startswith(crypto.MAGIC)


@pytest.mark.parametrize("piece", [1, 7, CHUNK, CHUNK + 1, 5 * CHUNK])
def test_input_pieces_of_any_size_are_recut_into_chunks(piece: int) -> None:
    data = os.urandom(4 * CHUNK + 9)
    blob = seal(data, pieces=piece)
    assert unseal(blob) == data
    assert len(blob) == crypto.encrypted_size(len(data), CHUNK)


def test_default_chunk_size_round_trip_of_a_few_mebibytes() -> None:
    data = os.urandom(3 * crypto.DEFAULT_CHUNK_SIZE + 123)
    out = io.BytesIO()
    written = crypto.encrypt_stream([data], out, KEY)
    assert written == len(out.getvalue()) == crypto.encrypted_size(len(data))
    chunks = list(crypto.decrypt_stream(io.BytesIO(out.getvalue()), KEY))
    assert [len(c) for c in chunks] == [crypto.DEFAULT_CHUNK_SIZE] * 3 + [123]
    assert b"".join(chunks) == data


def test_the_same_plaintext_encrypts_differently_each_time() -> None:
    data = b"x" * 100
    assert seal(data) != seal(data)
    assert data not in seal(data)


def _flip_byte_in_chunk_one(blob: bytearray) -> None:
    blob[crypto.HEADER_SIZE + RECORD + 3] ^= 0x01


def _flip_byte_in_a_tag(blob: bytearray) -> None:
    blob[crypto.HEADER_SIZE + RECORD - 1] ^= 0x80


def _drop_the_last_chunk(blob: bytearray) -> None:
    del blob[crypto.HEADER_SIZE + 3 * RECORD :]


def _cut_into_the_last_chunk(blob: bytearray) -> None:
    del blob[-5:]


def _swap_chunks_zero_and_one(blob: bytearray) -> None:
    start = crypto.HEADER_SIZE
    zero, one = blob[start : start + RECORD], blob[start + RECORD : start + 2 * RECORD]
    blob[start : start + 2 * RECORD] = one + zero


def _append_a_byte(blob: bytearray) -> None:
    blob.append(0)


def _duplicate_chunk_zero(blob: bytearray) -> None:
    start = crypto.HEADER_SIZE
    blob[start + RECORD : start + 2 * RECORD] = blob[start : start + RECORD]


TAMPERINGS: dict[str, Callable[[bytearray], None]] = {
    "flip a byte in a chunk": _flip_byte_in_chunk_one,
    "flip a bit in a tag": _flip_byte_in_a_tag,
    "drop the last chunk": _drop_the_last_chunk,
    "cut into the last chunk": _cut_into_the_last_chunk,
    "swap two chunks": _swap_chunks_zero_and_one,
    "append a byte": _append_a_byte,
    "duplicate a chunk": _duplicate_chunk_zero,
}


@pytest.mark.parametrize("tamper", sorted(TAMPERINGS))
def test_tampered_chunks_are_detected_with_a_clean_error(tamper: str) -> None:
    data = os.urandom(3 * CHUNK + 10)  # four chunks, the last one short
    blob = bytearray(seal(data))
    TAMPERINGS[tamper](blob)
    with pytest.raises(DecryptionError, match="does not authenticate") as info:
        unseal(bytes(blob))
    assert isinstance(info.value, IntegrityError)
    assert "test blob" in str(info.value)


def test_an_exact_multiple_of_chunks_cut_at_a_chunk_boundary_is_detected() -> None:
    blob = seal(os.urandom(4 * CHUNK))
    with pytest.raises(DecryptionError, match="chunk 2 does not authenticate"):
        unseal(blob[: crypto.HEADER_SIZE + 3 * RECORD])


def test_no_plaintext_of_a_bad_chunk_is_released() -> None:
    data = os.urandom(3 * CHUNK)
    blob = bytearray(seal(data))
    _flip_byte_in_chunk_one(blob)
    released = []
    with pytest.raises(DecryptionError):
        for chunk in crypto.decrypt_stream(io.BytesIO(bytes(blob)), KEY):
            released.append(chunk)
    assert b"".join(released) == data[:CHUNK]


HEADER_FIELDS = {
    "magic": 1,
    "format version": 9,
    "algorithm": 11,
    "chunk size": 14,
    "nonce prefix": 17,
    "key id": 20 + 3,
    "wrap nonce": 20 + 16 + 2,
    "wrapped data key": 20 + 28 + 5,
    "wrapped key tag": 20 + 75,
}


@pytest.mark.parametrize("field", sorted(HEADER_FIELDS))
def test_a_changed_header_field_is_detected_with_a_clean_error(field: str) -> None:
    blob = bytearray(seal(os.urandom(2 * CHUNK)))
    blob[HEADER_FIELDS[field]] ^= 0x01
    with pytest.raises(DecryptionError) as info:
        unseal(bytes(blob))
    assert isinstance(info.value, MaasError)
    assert "test blob" in info.value.message


def test_a_plausible_smaller_chunk_size_in_the_header_fails_before_reading_chunks() -> None:
    blob = bytearray(seal(os.urandom(4 * CHUNK)))
    struct.pack_into(">I", blob, 12, CHUNK // 2)
    with pytest.raises(DecryptionError, match="header is corrupted or was tampered with"):
        crypto.decrypt_stream(io.BytesIO(bytes(blob)), KEY)


def test_an_unknown_format_version_is_named_in_the_error() -> None:
    blob = bytearray(seal(b"data"))
    struct.pack_into(">H", blob, 8, 7)
    with pytest.raises(DecryptionError, match="format version 7"):
        unseal(bytes(blob))


def test_a_truncated_header_is_a_clean_error() -> None:
    with pytest.raises(DecryptionError, match="header is truncated"):
        unseal(seal(b"data")[:50])


def test_wrong_master_key_gives_a_clear_error_naming_both_key_ids() -> None:
    blob = seal(b"secret weights")
    with pytest.raises(WrongMasterKeyError, match="wrong master key") as info:
        crypto.decrypt_stream(io.BytesIO(blob), OTHER_KEY, label="blob sha256:abc")
    message = str(info.value)
    assert crypto.key_id(KEY) in message
    assert crypto.key_id(OTHER_KEY) in message
    assert "blob sha256:abc" in message
    assert isinstance(info.value, IntegrityError)
    assert info.value.code == "wrong_master_key"


def test_key_id_identifies_a_key_without_revealing_it() -> None:
    assert crypto.key_id(KEY) == crypto.key_id(bytes(KEY))
    assert crypto.key_id(KEY) != crypto.key_id(OTHER_KEY)
    assert KEY.hex() not in crypto.key_id(KEY)
    assert len(crypto.key_id(KEY)) == 2 * crypto.KEY_ID_SIZE


def test_a_master_key_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        seal(b"x", key=b"short")


def test_rewrap_then_read_with_the_new_key_and_the_old_key_is_refused(tmp_path: Path) -> None:
    data = os.urandom(5 * CHUNK + 1)
    path = write(tmp_path, data)
    body = path.read_bytes()[crypto.HEADER_SIZE :]
    os.utime(path, (1_000_000, 1_000_000))

    assert crypto.rewrap(path, KEY, OTHER_KEY) is True

    assert b"".join(crypto.decrypt_file(path, OTHER_KEY)) == data
    with pytest.raises(WrongMasterKeyError, match="wrong master key"):
        b"".join(crypto.decrypt_file(path, KEY))
    # Only the key slot changed: same content bytes, same size, same mtime.
    assert path.read_bytes()[crypto.HEADER_SIZE :] == body
    assert path.stat().st_mtime == 1_000_000


def test_rewrap_run_again_is_a_no_op(tmp_path: Path) -> None:
    path = write(tmp_path, b"data")
    assert crypto.rewrap(path, KEY, OTHER_KEY) is True
    before = path.read_bytes()
    assert crypto.rewrap(path, KEY, OTHER_KEY) is False
    assert path.read_bytes() == before


def test_rewrap_with_a_key_that_is_neither_old_nor_new_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, b"data")
    before = path.read_bytes()
    with pytest.raises(WrongMasterKeyError):
        crypto.rewrap(path, OTHER_KEY, THIRD_KEY)
    assert path.read_bytes() == before


def test_successive_rotations_alternate_slots(tmp_path: Path) -> None:
    path = write(tmp_path, b"data")
    assert crypto.rewrap(path, KEY, OTHER_KEY)
    assert crypto.rewrap(path, OTHER_KEY, THIRD_KEY)
    assert crypto.rewrap(path, THIRD_KEY, KEY)
    assert b"".join(crypto.decrypt_file(path, KEY)) == b"data"
    for stale in (OTHER_KEY, THIRD_KEY):
        with pytest.raises(WrongMasterKeyError):
            b"".join(crypto.decrypt_file(path, stale))


def test_rewrap_interrupted_between_its_two_writes_leaves_a_readable_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, b"model weights")
    real_pwrite = os.pwrite
    calls = []

    def crash_on_second_write(fd: int, data: bytes, offset: int) -> int:
        calls.append(offset)
        if len(calls) == 2:
            raise OSError("simulated crash")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(crypto.os, "pwrite", crash_on_second_write)
    with pytest.raises(OSError, match="simulated crash"):
        crypto.rewrap(path, KEY, OTHER_KEY)
    monkeypatch.undo()

    # Both slots authenticate: the old key still works, and so does the new one.
    assert b"".join(crypto.decrypt_file(path, KEY)) == b"model weights"
    assert b"".join(crypto.decrypt_file(path, OTHER_KEY)) == b"model weights"
    # Running the rotation again finishes it.
    assert crypto.rewrap(path, KEY, OTHER_KEY) is True
    with pytest.raises(WrongMasterKeyError):
        b"".join(crypto.decrypt_file(path, KEY))


def test_looks_encrypted_and_has_magic_leave_the_position_at_the_start(tmp_path: Path) -> None:
    path = write(tmp_path, b"data")
    assert crypto.looks_encrypted(path)
    plain = tmp_path / "plain"
    plain.write_bytes(b"not encrypted")
    assert not crypto.looks_encrypted(plain)
    src = io.BytesIO(path.read_bytes())
    assert crypto.has_magic(src)
    assert src.tell() == 0
