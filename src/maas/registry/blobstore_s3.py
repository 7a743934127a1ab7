"""Blobs in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, ...), through boto3.

Layout under ``s3://bucket/prefix/``: ``sha256/<first two hex>/<full hex>``
holds the blobs (as the local store lays out files) and ``touched/<full hex>``
holds an empty marker per blob that a push found already stored.

- **Atomic writes.** A blob is uploaded from a finished local staging file; an
  S3 PUT (or a completed multipart upload) makes an object visible whole or
  not at all, so a crash never leaves part of a blob under its name.
  Unfinished multipart uploads are aborted by gc once older than its grace.
- **Big files.** Files at or above ``part_bytes`` go up as multipart uploads,
  parts in parallel; reads stream, never holding a whole object.
- **gc's grace period.** An object's LastModified cannot be refreshed without
  rewriting it (gigabytes), so reuse writes the small ``touched/`` marker
  instead, and a blob's ``modified`` is the later of the two. Ages are
  measured on the server's clock (its ``Date`` header), so a client whose
  clock is off does not shorten the grace period.

Errors of the client (unreachable endpoint, missing credentials or bucket,
refused requests) become :class:`~maas.errors.UnavailableError` naming the
store; a missing object is :class:`~maas.errors.NotFoundError`.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from maas import crypto
from maas.config import Settings
from maas.errors import NotFoundError, UnavailableError
from maas.registry.blobstore import ChunkReader, StoredBlob, check_sha256

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from types_boto3_s3 import S3Client

MIB = 1024 * 1024
READ_CHUNK = MIB
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
# S3 answers a range that starts at or past the end (an empty object's too) with 416.
_PAST_END = frozenset({"416", "InvalidRange"})


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ("bucket", "some/prefix/"); the prefix may be empty."""
    if not url.startswith("s3://"):
        raise ValueError(f"not an s3:// URL: {url!r}")
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {url!r}: expected s3://bucket/prefix")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3BlobBackend:
    """A backend on one bucket and key prefix."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        prefix: str,
        staging_dir: Path,
        *,
        part_bytes: int = 64 * MIB,
        upload_threads: int = 4,
    ) -> None:
        self._client = client
        self._bucket = bucket
        self._prefix = prefix
        self._staging = staging_dir
        self._staging.mkdir(parents=True, exist_ok=True)
        # S3 refuses parts under 5 MiB (except the last).
        part_bytes = max(part_bytes, 5 * MIB)
        self._transfer = TransferConfig(
            multipart_threshold=part_bytes,
            multipart_chunksize=part_bytes,
            max_concurrency=upload_threads,
            use_threads=upload_threads > 1,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> S3BlobBackend:
        assert settings.artifact_url is not None
        bucket, prefix = parse_s3_url(settings.artifact_url)
        secret = settings.s3_secret_access_key
        # Unset settings fall through to boto3's own chain: AWS_* variables,
        # ~/.aws/config and credentials, instance or container roles.
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret is not None else None,
            config=Config(
                s3={"addressing_style": settings.s3_addressing_style},
                retries={"mode": "standard", "max_attempts": 5},
                max_pool_connections=16,
            ),
        )
        return cls(
            client,
            bucket,
            prefix,
            settings.tmp_dir / "s3-staging",
            part_bytes=settings.s3_part_bytes,
        )

    # ------------------------------------------------------------------ naming

    @property
    def location(self) -> str:
        return f"s3://{self._bucket}/{self._prefix}"

    @property
    def staging_dir(self) -> Path:
        return self._staging

    def key(self, sha256: str) -> str:
        """The object key of blob ``sha256``."""
        check_sha256(sha256)
        return f"{self._prefix}sha256/{sha256[:2]}/{sha256}"

    def _marker(self, sha256: str) -> str:
        return f"{self._prefix}touched/{check_sha256(sha256)}"

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except ClientError as exc:
            raise UnavailableError(
                f"artifact store {self.location}: {action} failed: {_error_code(exc)} "
                f"({exc.response.get('Error', {}).get('Message', '')})"
            ) from exc
        except (BotoCoreError, Boto3Error) as exc:
            raise UnavailableError(
                f"artifact store {self.location}: {action} failed: {exc}"
            ) from exc

    # ----------------------------------------------------------------- reading

    def _head(self, key: str) -> tuple[int, float] | None:
        with self._errors(f"HEAD {key}"):
            try:
                head = self._client.head_object(Bucket=self._bucket, Key=key)
            except ClientError as exc:
                if _error_code(exc) in _NOT_FOUND:
                    return None
                raise
        return head["ContentLength"], head["LastModified"].timestamp()

    def stat(self, sha256: str) -> StoredBlob | None:
        blob = self._head(self.key(sha256))
        if blob is None:
            return None
        marker = self._head(self._marker(sha256))
        modified = max(blob[1], marker[1]) if marker is not None else blob[1]
        return StoredBlob(sha256, blob[0], modified)

    def open(self, sha256: str) -> BinaryIO:
        reader = _ObjectReader(self, self.key(sha256))
        try:
            reader.start(0)
        except NotFoundError:
            raise NotFoundError(f"blob sha256:{sha256} not found") from None
        return io.BufferedReader(reader, READ_CHUNK)

    def _get(self, key: str, start: int) -> Any:
        """The streaming body of ``key`` from byte ``start``; None past the end."""
        with self._errors(f"GET {key}"):
            try:
                if start == 0:
                    response = self._client.get_object(Bucket=self._bucket, Key=key)
                else:
                    response = self._client.get_object(
                        Bucket=self._bucket, Key=key, Range=f"bytes={start}-"
                    )
            except ClientError as exc:
                code = _error_code(exc)
                if code in _NOT_FOUND:
                    raise NotFoundError(f"{self.location}{key} not found") from None
                if code in _PAST_END:
                    return None
                raise
        return response["Body"]

    def iter_stored(self) -> Iterator[StoredBlob]:
        touched = {
            key.rpartition("/")[2]: modified
            for key, _, modified in self._list(f"{self._prefix}touched/")
        }
        for key, size, modified in self._list(f"{self._prefix}sha256/"):
            sha = key.rpartition("/")[2]
            try:
                check_sha256(sha)
            except ValueError:
                continue  # not ours
            yield StoredBlob(sha, size, max(modified, touched.get(sha, modified)))

    def _list(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self._bucket, Prefix=prefix
        )
        with self._errors(f"LIST {prefix}"):
            for page in pages:
                for item in page.get("Contents", []):
                    yield item["Key"], item["Size"], item["LastModified"].timestamp()

    def clock(self) -> float:
        with self._errors("HEAD bucket"):
            response = self._client.head_bucket(Bucket=self._bucket)
        date = response["ResponseMetadata"].get("HTTPHeaders", {}).get("date")
        return parsedate_to_datetime(date).timestamp() if date else time.time()

    # ----------------------------------------------------------------- writing

    def store(self, sha256: str, staged: Path) -> None:
        key = self.key(sha256)
        try:
            with self._errors(f"upload of {key}"):
                # upload_file switches to a parallel multipart upload at part_bytes,
                # and aborts the multipart upload if a part fails.
                self._client.upload_file(str(staged), self._bucket, key, Config=self._transfer)
        finally:
            staged.unlink(missing_ok=True)

    def touch(self, sha256: str) -> None:
        with self._errors("PUT marker"):
            self._client.put_object(Bucket=self._bucket, Key=self._marker(sha256), Body=b"")

    def delete(self, sha256: str) -> None:
        with self._errors(f"DELETE {sha256}"):
            self._client.delete_object(Bucket=self._bucket, Key=self.key(sha256))
            self._client.delete_object(Bucket=self._bucket, Key=self._marker(sha256))

    def remove_stale_uploads(self, cutoff: float) -> None:
        pages = self._client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self._bucket, Prefix=f"{self._prefix}sha256/"
        )
        with self._errors("cleaning unfinished uploads"):
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"].timestamp() <= cutoff:
                        self._client.abort_multipart_upload(
                            Bucket=self._bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
        # Staging files of writers on this machine that died mid-push.
        local_cutoff = time.time() - (self.clock() - cutoff)
        for staged in self._staging.iterdir():
            try:
                if staged.stat().st_mtime <= local_cutoff:
                    staged.unlink()
            except FileNotFoundError:
                continue

    def rewrap(self, sha256: str, old_master_key: bytes, new_master_key: bytes) -> bool:
        label = f"blob sha256:{sha256}"
        with self.open(sha256) as src:
            header = crypto.rewrapped_header(
                src.read(crypto.HEADER_SIZE), old_master_key, new_master_key, label=label
            )
            if header is None:
                return False
            # Objects cannot be written in place: upload the blob again with the new
            # header (a streamed copy; the replacement is atomic, as every PUT is).
            rest = iter(lambda: src.read(READ_CHUNK), b"")
            body = io.BufferedReader(ChunkReader(_prepend(header, rest)), READ_CHUNK)
            with self._errors(f"rewriting {sha256}"):
                self._client.upload_fileobj(
                    body, self._bucket, self.key(sha256), Config=self._transfer
                )
        return True


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


class _ObjectReader(io.RawIOBase):
    """A seekable raw file over one object: each seek starts a ranged GET.

    The artifact store seeks only to the start (after peeking at the magic
    bytes) or just past the encryption header, so a read is one or two GETs.
    """

    def __init__(self, backend: S3BlobBackend, key: str) -> None:
        self._backend = backend
        self._key = key
        self._pos = 0
        self._body: Any = None
        self._started = False

    def start(self, pos: int) -> None:
        if self._body is not None:
            self._body.close()
        self._body = self._backend._get(self._key, pos)
        self._pos = pos
        self._started = True

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_CUR:
            offset += self._pos
        elif whence != os.SEEK_SET:
            raise io.UnsupportedOperation("seek from the end of an object")
        if offset != self._pos or not self._started:
            self.start(offset)
        return self._pos

    def readinto(self, buffer: WriteableBuffer) -> int:
        if self._body is None:
            return 0
        view = memoryview(buffer).cast("B")
        with self._backend._errors(f"reading {self._key}"):
            data = self._body.read(len(view))
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed and self._body is not None:
            self._body.close()
        super().close()
