"""Turning what a user offers (a directory, one file, an archive) into checked files.

Everything here validates *before* anything reaches the blob store: a refused
upload writes nothing.
"""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from maas.errors import InvalidRequestError, PayloadTooLargeError, UnsafeFormatError

# Weight formats that unpickle arbitrary Python objects when loaded.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"})
# Never part of a model: VCS and interpreter litter.
SKIPPED_DIRS = frozenset({".git", "__pycache__", ".ipynb_checkpoints"})
MAX_FILES = 10_000


@dataclass(frozen=True, slots=True)
class SourceFile:
    relpath: str
    path: Path
    size: int


def check_relpath(name: str) -> str:
    """Normalise an archive member name or refuse it if it could escape the root."""
    if "\\" in name or "\x00" in name:
        raise InvalidRequestError(f"refused archive member {name!r}: invalid characters")
    pure = PurePosixPath(name)
    if pure.is_absolute() or (pure.parts and pure.parts[0].endswith(":")):
        raise InvalidRequestError(f"refused archive member {name!r}: absolute path")
    parts = [p for p in pure.parts if p not in ("", ".")]
    if ".." in parts:
        raise InvalidRequestError(f"refused archive member {name!r}: path traversal ('..')")
    if not parts:
        raise InvalidRequestError(f"refused archive member {name!r}: empty path")
    return "/".join(parts)


def check_safe_format(relpath: str, *, allow_unsafe: bool) -> None:
    suffix = PurePosixPath(relpath).suffix.lower()
    if suffix in PICKLE_SUFFIXES and not allow_unsafe:
        raise UnsafeFormatError(
            f"refused {relpath!r}: {suffix} files are pickle-based and can run code when "
            "loaded; convert the weights to safetensors or ONNX, or set "
            "MAAS_ALLOW_UNSAFE_FORMATS=true if you trust this file",
            param="file",
        )


def scan_directory(root: Path, *, allow_unsafe: bool) -> list[SourceFile]:
    """List a local model directory (or a single file) as files to store.

    Symlinks are followed when they point at regular files (Hugging Face's
    cache is made of them); their content is stored, never the link.
    """
    if root.is_file():
        check_safe_format(root.name, allow_unsafe=allow_unsafe)
        return [SourceFile(root.name, root, root.stat().st_size)]
    if not root.is_dir():
        raise InvalidRequestError(f"{root} is neither a file nor a directory", param="path")
    files: list[SourceFile] = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in SKIPPED_DIRS for part in rel.parts):
            continue
        if path.is_dir():
            continue
        if not path.is_file():
            raise InvalidRequestError(f"refused {rel}: not a regular file", param="path")
        relpath = rel.as_posix()
        check_safe_format(relpath, allow_unsafe=allow_unsafe)
        files.append(SourceFile(relpath, path, path.stat().st_size))
    if not files:
        raise InvalidRequestError(f"{root} holds no files", param="path")
    if len(files) > MAX_FILES:
        raise InvalidRequestError(f"{root} holds more than {MAX_FILES} files", param="path")
    return files


def _limit_error(max_bytes: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"archive expands to more than the {max_bytes} byte limit (MAAS_MAX_UPLOAD_BYTES)"
    )


def _copy_limited(src: object, dest: Path, budget: int, max_bytes: int) -> int:
    """Copy a file object to ``dest``; return bytes written; stop past ``budget``."""
    written = 0
    read = src.read  # type: ignore[attr-defined]
    with dest.open("wb") as out:
        while chunk := read(1024 * 1024):
            written += len(chunk)
            if written > budget:
                raise _limit_error(max_bytes)
            out.write(chunk)
    return written


# Leading bytes of the archive formats accepted (tar compressions are the ones
# ``tarfile`` reads). Sniffed instead of ``zipfile.is_zipfile``, which searches
# for an end-of-central-directory record near the *end* of the file and so
# takes a tar whose last member is itself a zip (.npz, a torch .bin) for a zip.
_COMPRESSED_TAR_MAGIC = (
    b"\x1f\x8b",  # gzip
    b"BZh",  # bzip2
    b"\xfd7zXZ\x00",  # xz
)
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members; an empty zip
_TAR_MAGIC_OFFSET = 257  # "ustar" in the first header (POSIX and GNU tar)
_CONTENT_TYPES = {
    "application/zip": "zip",
    "application/x-zip-compressed": "zip",
    "application/x-tar": "tar",
    "application/tar": "tar",
    "application/x-gtar": "tar",
    "application/gzip": "tar",
    "application/x-gzip": "tar",
    "application/x-bzip2": "tar",
    "application/x-xz": "tar",
}


def archive_kind(archive: Path, content_type: str | None = None) -> str | None:
    """``"tar"`` (any compression), ``"zip"``, or ``None``, from the file's leading bytes.

    ``content_type`` counts only when the bytes do not decide (an old tar without
    the ``ustar`` magic, a zip behind a stub); when they do, a mislabelled upload
    is still read right.
    """
    with archive.open("rb") as f:
        head = f.read(_TAR_MAGIC_OFFSET + 8)
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head.startswith(_COMPRESSED_TAR_MAGIC):
        return "tar"
    if head[_TAR_MAGIC_OFFSET : _TAR_MAGIC_OFFSET + 5] == b"ustar":
        return "tar"
    claimed = _CONTENT_TYPES.get((content_type or "").split(";")[0].strip().lower())
    if claimed == "zip" and zipfile.is_zipfile(archive):
        return "zip"  # data before the first member (a self-extracting zip)
    if claimed in ("tar", None) and _is_tar(archive):
        return "tar"  # a pre-POSIX tar: tarfile checks its header checksum
    return None


def extract_archive(
    archive: Path,
    dest: Path,
    *,
    allow_unsafe: bool,
    max_bytes: int,
    content_type: str | None = None,
) -> None:
    """Safely extract a tar (any compression) or zip archive into ``dest``.

    The type comes from the leading bytes (see :func:`archive_kind`). All
    members are checked first (traversal, absolute paths, links, devices,
    pickle files, declared sizes); only then is anything written. The byte
    budget is enforced again while writing, since archive headers can lie.
    """
    kind = archive_kind(archive, content_type)
    if kind == "zip":
        _extract_zip(archive, dest, allow_unsafe=allow_unsafe, max_bytes=max_bytes)
    elif kind == "tar":
        _extract_tar(archive, dest, allow_unsafe=allow_unsafe, max_bytes=max_bytes)
    else:
        raise InvalidRequestError(
            "upload is not a tar or zip archive; send the model directory as "
            "tar, tar.gz or zip (or use Content-Type application/octet-stream with "
            "?filename=model.onnx for a single file)",
            param="body",
        )


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except (OSError, tarfile.TarError):
        return False


def _check_directory(name: str) -> None:
    """A directory entry is only checked for escapes; the root itself (``./``) is fine."""
    if name not in (".", "./"):  # what `tar -C dir -cf - .` writes for dir itself
        check_relpath(name)


def _check_members(names: list[tuple[str, int]], *, allow_unsafe: bool, max_bytes: int) -> None:
    seen: set[str] = set()
    total = 0
    for name, size in names:
        rel = check_relpath(name)
        if rel in seen:
            raise InvalidRequestError(f"refused archive: duplicate member {rel!r}")
        seen.add(rel)
        check_safe_format(rel, allow_unsafe=allow_unsafe)
        total += size
        if total > max_bytes:
            raise _limit_error(max_bytes)
    if not seen:
        raise InvalidRequestError("archive holds no files", param="body")
    if len(seen) > MAX_FILES:
        raise InvalidRequestError(f"archive holds more than {MAX_FILES} files", param="body")


def _extract_tar(archive: Path, dest: Path, *, allow_unsafe: bool, max_bytes: int) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            files: list[tarfile.TarInfo] = []
            for member in members:
                if member.issym() or member.islnk():
                    raise InvalidRequestError(
                        f"refused archive member {member.name!r}: links are not allowed"
                    )
                if member.isdir():
                    _check_directory(member.name)
                    continue
                if not member.isfile():
                    raise InvalidRequestError(
                        f"refused archive member {member.name!r}: not a regular file"
                    )
                files.append(member)
            _check_members(
                [(m.name, m.size) for m in files], allow_unsafe=allow_unsafe, max_bytes=max_bytes
            )
            budget = max_bytes
            for member in files:
                target = dest / check_relpath(member.name)
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                if src is None:  # pragma: no cover - isfile() members always have data
                    raise InvalidRequestError(f"archive member {member.name!r} has no data")
                with src:
                    budget -= _copy_limited(src, target, budget, max_bytes)
    except (tarfile.TarError, EOFError, OSError) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise InvalidRequestError(f"corrupt tar archive: {exc}", param="body") from exc


def _extract_zip(archive: Path, dest: Path, *, allow_unsafe: bool, max_bytes: int) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            files: list[zipfile.ZipInfo] = []
            for info in infos:
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise InvalidRequestError(
                        f"refused archive member {info.filename!r}: links are not allowed"
                    )
                if info.is_dir():
                    _check_directory(info.filename)
                    continue
                files.append(info)
            _check_members(
                [(i.filename, i.file_size) for i in files],
                allow_unsafe=allow_unsafe,
                max_bytes=max_bytes,
            )
            budget = max_bytes
            for info in files:
                target = dest / check_relpath(info.filename)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src:
                    budget -= _copy_limited(src, target, budget, max_bytes)
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise InvalidRequestError(f"corrupt zip archive: {exc}", param="body") from exc
