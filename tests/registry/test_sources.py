import io
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from maas.errors import InvalidRequestError, PayloadTooLargeError, UnsafeFormatError
from maas.registry.sources import archive_kind, extract_archive, scan_directory
from maas.registry.store import Registry
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


def _npz_bytes() -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, weights=np.arange(6, dtype=np.float32))
    return buf.getvalue()


def _torch_bin_bytes() -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf)  # torch's zip format: data.pkl inside
    return buf.getvalue()


def test_tar_whose_last_member_is_an_npz_is_read_as_a_tar(tmp_path: Path) -> None:
    npz = _npz_bytes()
    data = tar_bytes({"config.json": b"{}", "weights.npz": npz})
    (tmp_path / "probe").write_bytes(data)
    assert zipfile.is_zipfile(tmp_path / "probe")  # the trap: the inner zip's end record
    dest = _extract(tmp_path, data)
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "weights.npz"]
    assert (dest / "weights.npz").read_bytes() == npz


def test_tar_whose_last_member_is_a_torch_bin_names_the_file_that_was_sent(
    tmp_path: Path,
) -> None:
    weights = _torch_bin_bytes()
    data = tar_bytes({"config.json": b"{}", "pytorch_model.bin": weights})
    (tmp_path / "probe").write_bytes(data)
    assert zipfile.is_zipfile(tmp_path / "probe")
    with pytest.raises(UnsafeFormatError, match=r"refused 'pytorch_model\.bin'"):
        _extract(tmp_path, data)
    (tmp_path / "dest").rmdir()
    dest = _extract(tmp_path, data, allow_unsafe=True)
    assert (dest / "pytorch_model.bin").read_bytes() == weights


@pytest.mark.parametrize("gz", [False, True])
def test_tar_of_a_directory_with_its_dot_slash_entry_is_accepted(tmp_path: Path, gz: bool) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        root = tarfile.TarInfo("./")
        root.type = tarfile.DIRTYPE
        tar.addfile(root)
        info = tarfile.TarInfo("./config.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    dest = _extract(tmp_path, buf.getvalue())
    assert (dest / "config.json").read_bytes() == b"{}"


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs the tar command")
def test_push_of_tar_c_dir_dot_stores_the_directory(registry: Registry, hf_dir: Path) -> None:
    archive = hf_dir.parent / "model.tar"
    subprocess.run(["tar", "-C", str(hf_dir), "-cf", str(archive), "."], check=True)
    with tarfile.open(archive) as tar:
        assert "./" in tar.getnames() or "." in tar.getnames()
    info = registry.push_archive(archive, "m", content_type="application/x-tar")
    assert info.ref == "m:1" and info.format == "hf"
    files = {f.path for f in registry.get_version("m:1", with_files=True).files or []}
    assert files == {"config.json", "model.safetensors", "tokenizer/vocab.txt"}


def test_archive_kind_comes_from_leading_bytes_and_content_type_only_breaks_ties(
    tmp_path: Path,
) -> None:
    path = tmp_path / "upload"
    path.write_bytes(tar_bytes({"a.npz": _npz_bytes()}))
    assert archive_kind(path, "application/zip") == "tar"  # the bytes win over a wrong label
    path.write_bytes(zip_bytes({"a.txt": b"a"}))
    assert archive_kind(path, "application/x-tar") == "zip"
    path.write_bytes(b"#!stub\n" + zip_bytes({"a.txt": b"a"}))  # zip behind a stub
    assert archive_kind(path) is None
    assert archive_kind(path, "application/zip") == "zip"
    path.write_bytes(b"just some bytes")
    assert archive_kind(path, "application/zip") is None
