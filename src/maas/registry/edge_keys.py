"""The registry's Ed25519 key that signs edge bundles (``maas export-edge``).

Files under ``MAAS_HOME/keys/``:

* ``edge-signing.key``: the private key, PKCS#8 PEM, mode 0600. With encryption at
  rest on (a master key is configured) the PEM is sealed with the blobs' AES-256-GCM
  format (:mod:`maas.crypto`) under the master key, so a copy of the home
  without the master key cannot sign.
* ``edge-signing.pem``: the public key (SubjectPublicKeyInfo PEM), what devices pin.
* ``edge-signing-retired/<key id>.pem``: public keys of earlier keys. Rotation makes a
  new key and retires the old one's public half, so bundles signed before can still
  be checked against it; its private half is deleted.

A key id is the first 16 hex digits of the sha256 of the raw public key (the bundle
runner computes the same). The registry package holds this store, not ``security/``,
because the edge job (``jobs/``) signs with it and jobs may not import ``security/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from maas import crypto
from maas.config import Settings
from maas.errors import ConflictError, IntegrityError, NotFoundError

PRIVATE_FILE = "edge-signing.key"
PUBLIC_FILE = "edge-signing.pem"
RETIRED_DIR = "edge-signing-retired"


@dataclass(frozen=True, slots=True)
class PublicKeyInfo:
    key_id: str
    pem: str  # SubjectPublicKeyInfo PEM
    raw: bytes  # the 32 key bytes


def public_info(key: Ed25519PublicKey) -> PublicKeyInfo:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return PublicKeyInfo(hashlib.sha256(raw).hexdigest()[:16], pem, raw)


class EdgeSigningKeys:
    """Create, read, rotate the edge-signing key of the registry at ``settings.home``."""

    def __init__(self, settings: Settings) -> None:
        self.folder = settings.home / "keys"
        self._master_key = settings.master_key_bytes

    @property
    def private_path(self) -> Path:
        return self.folder / PRIVATE_FILE

    @property
    def public_path(self) -> Path:
        return self.folder / PUBLIC_FILE

    def exists(self) -> bool:
        return self.private_path.is_file()

    def create(self) -> PublicKeyInfo:
        """Make the key; refused when one exists (``rotate`` replaces it)."""
        if self.exists():
            raise ConflictError(
                f"an edge-signing key exists ({self.public().key_id}); "
                "`maas keys edge-signing rotate` replaces it"
            )
        return self._write(Ed25519PrivateKey.generate(), exclusive=True)

    def rotate(self) -> tuple[PublicKeyInfo, PublicKeyInfo]:
        """A new key replaces the current one, whose public half is kept; (old, new)."""
        old = self.public()
        retired = self.folder / RETIRED_DIR
        retired.mkdir(parents=True, exist_ok=True)
        (retired / f"{old.key_id}.pem").write_text(old.pem)
        return old, self._write(Ed25519PrivateKey.generate(), exclusive=False)

    def public(self) -> PublicKeyInfo:
        if not self.exists():
            raise NotFoundError(
                "no edge-signing key yet: `maas keys edge-signing create` makes one "
                "(`maas export-edge` makes one on first use)"
            )
        return public_info(self.private().public_key())

    def retired(self) -> list[PublicKeyInfo]:
        folder = self.folder / RETIRED_DIR
        found = []
        for path in sorted(folder.glob("*.pem")) if folder.is_dir() else []:
            key = serialization.load_pem_public_key(path.read_bytes())
            if isinstance(key, Ed25519PublicKey):
                found.append(public_info(key))
        return found

    def private(self) -> Ed25519PrivateKey:
        data = self.private_path.read_bytes()
        if crypto.has_magic(io.BytesIO(data)):
            if self._master_key is None:
                raise IntegrityError(
                    f"{self.private_path} is encrypted at rest; set the master key "
                    "(MAAS_MASTER_KEY or MAAS_MASTER_KEY_FILE) to sign with it"
                )
            data = b"".join(
                crypto.decrypt_stream(io.BytesIO(data), self._master_key, label=PRIVATE_FILE)
            )
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise IntegrityError(f"{self.private_path} does not hold an Ed25519 key")
        return key

    def signing_key(self) -> tuple[Ed25519PrivateKey, bool]:
        """The private key, made now if there is none yet; (key, made now)."""
        if self.exists():
            return self.private(), False
        with contextlib.suppress(FileExistsError):  # another process made one first: use it
            self._write(Ed25519PrivateKey.generate(), exclusive=True)
        return self.private(), True

    def _write(self, key: Ed25519PrivateKey, *, exclusive: bool) -> PublicKeyInfo:
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        if self._master_key is not None:
            sealed = io.BytesIO()
            crypto.encrypt_stream([pem], sealed, self._master_key)
            pem = sealed.getvalue()
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        info = public_info(key.public_key())
        # Written whole to a 0600 temp file, fsynced, then renamed: never a half key,
        # and never readable by others even for a moment.
        tmp = self.folder / f".{PRIVATE_FILE}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            try:
                os.link(tmp, self.private_path)  # fails if another key appeared meanwhile
            finally:
                tmp.unlink()
        else:
            os.replace(tmp, self.private_path)
        self.public_path.write_text(info.pem)
        return info
