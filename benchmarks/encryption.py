"""Encryption at rest: throughput of the blob store with and without a master key, in one run.

Prints MB/s (10^6 bytes per second) for

(a) the cipher alone: ``crypto.encrypt_stream`` into a null sink, and
    ``crypto.decrypt_stream`` from an encrypted file in the page cache;
(b) the store: ``ArtifactStore.put_stream`` (sha256 + write + fsync) and
    ``open_verified`` (read + sha256), plaintext vs encrypted, with the ratio
    encrypted / plaintext measured in the same run.

Usage: ``.venv/bin/python benchmarks/encryption.py [--mib 512] [--repeat 3]``.
Each figure is the best of ``--repeat`` runs. The figures of a reference run:
docs/encryption.md.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from maas import crypto
from maas.registry.artifacts import ArtifactStore

MIB = 1024 * 1024
KEY = bytes(range(32))


class _NullSink(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        return len(memoryview(data))  # type: ignore[arg-type]


def _stream(total: int) -> Iterator[bytes]:
    block = hashlib.sha256(b"bench").digest() * (MIB // 32)
    for i in range(total // MIB):
        yield i.to_bytes(8, "big") + block[8:]


def _best(repeat: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def _drain(chunks: Iterator[bytes]) -> None:
    for _ in chunks:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512, help="Stream size in MiB.")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    total = args.mib * MIB

    def mbps(seconds: float) -> float:
        return total / seconds / 1e6

    print(f"{platform.processor() or platform.machine()}, {args.mib} MiB, best of {args.repeat}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        encrypt = _best(
            args.repeat, lambda: crypto.encrypt_stream(_stream(total), _NullSink(), KEY)
        )
        sealed = root / "sealed"
        with sealed.open("wb") as out:
            crypto.encrypt_stream(_stream(total), out, KEY)
        decrypt = _best(args.repeat, lambda: _drain(crypto.decrypt_file(sealed, KEY)))
        sealed.unlink()
        print(f"cipher    encrypt {mbps(encrypt):7.0f} MB/s   decrypt {mbps(decrypt):7.0f} MB/s")

        results = {}
        for name, key in (("plain", None), ("encrypted", KEY)):
            blobs = root / name
            store = ArtifactStore(blobs, master_key=key)

            def put(store: ArtifactStore = store, blobs: Path = blobs) -> None:
                for _, path in list(store.iter_blobs()):
                    path.unlink()  # each run writes, not dedupes
                store.put_stream(_stream(total))

            write = _best(args.repeat, put)
            sha = next(store.iter_blobs())[0]
            read = _best(args.repeat, lambda store=store, sha=sha: _drain(store.open_verified(sha)))
            results[name] = (write, read)
            print(f"{name:9} put {mbps(write):7.0f} MB/s   read    {mbps(read):7.0f} MB/s")
        (pw, pr), (ew, er) = results["plain"], results["encrypted"]
        print(f"encrypted takes {ew / pw:.2f}x the time of plain to put, {er / pr:.2f}x to read")


if __name__ == "__main__":
    main()
