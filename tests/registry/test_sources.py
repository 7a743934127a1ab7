from pathlib import Path

import pytest

from maas.errors import InvalidRequestError, PayloadTooLargeError, UnsafeFormatError
from maas.registry.sources import extract_archive, scan_directory
from tests.helpers import tar_bytes, tar_with_symlink, zip_bytes


def _extract(
    tmp_path: Path, data: bytes, *, allow_unsafe: bool = False, max_bytes: int = 10**6
) -> Path:
    archive = tmp_path / "upload"
    archive.write_bytes(data)
    dest = tmp_path / "dest"
    dest.mkdir()
    extract_archive(archive, dest, allow_unsafe=allow_unsafe, max_bytes=max_bytes)
    return dest


@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt", "/etc/passwd"])
@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_traversal_and_absolute_members_are_refused_before_writing(
    tmp_path: Path, name: str, kind: str
) -> None:
    files = {"config.json": b"{}", name: b"x"}
    data = tar_bytes(files) if kind == "tar" else zip_bytes(files)
    with pytest.raises(InvalidRequestError, match="refused archive member"):
        _extract(tmp_path, data)
    assert list((tmp_path / "dest").iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


def test_symlink_members_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="links are not allowed"):
        _extract(tmp_path, tar_with_symlink("/etc/passwd"))
    assert list((tmp_path / "dest").iterdir()) == []


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pth", ".pkl", ".ckpt"])
def test_pickle_weights_are_refused_unless_allowed(tmp_path: Path, suffix: str) -> None:
    data = tar_bytes({"config.json": b"{}", f"weights{suffix}": b"\x80\x04."})
    with pytest.raises(UnsafeFormatError, match="pickle"):
        _extract(tmp_path, data)
    assert list((tmp_path / "dest").iterdir()) == []
    (tmp_path / "dest").rmdir()
    dest = _extract(tmp_path, data, allow_unsafe=True)
    assert (dest / f"weights{suffix}").exists()


def test_expanded_size_is_limited_even_when_compressed_small(tmp_path: Path) -> None:
    data = tar_bytes({"zeros.safetensors": b"\0" * 200_000}, gz=True)
    assert len(data) < 2_000
    with pytest.raises(PayloadTooLargeError):
        _extract(tmp_path, data, max_bytes=100_000)


def test_gzip_tar_and_zip_extract_nested_files(tmp_path: Path) -> None:
    dest = _extract(tmp_path, tar_bytes({"./a/b.txt": b"b", "c.txt": b"c"}, gz=True))
    assert (dest / "a" / "b.txt").read_bytes() == b"b"
    other = tmp_path / "z"
    other.mkdir()
    (other / "upload").write_bytes(zip_bytes({"x/y.json": b"{}"}))
    (other / "dest").mkdir()
    extract_archive(other / "upload", other / "dest", allow_unsafe=False, max_bytes=100)
    assert (other / "dest" / "x" / "y.json").read_bytes() == b"{}"


def test_non_archive_is_rejected_with_guidance(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="not a tar or zip"):
        _extract(tmp_path, b"just some bytes")


def test_scan_directory_refuses_pickles_and_skips_git(tmp_path: Path) -> None:
    root = tmp_path / "m"
    (root / ".git").mkdir(parents=True)
    (root / ".git" / "HEAD").write_text("ref")
    (root / "config.json").write_text("{}")
    files = scan_directory(root, allow_unsafe=False)
    assert [f.relpath for f in files] == ["config.json"]
    (root / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(UnsafeFormatError):
        scan_directory(root, allow_unsafe=False)
