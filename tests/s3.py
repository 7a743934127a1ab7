"""A real S3-compatible server for tests: moto's server in a subprocess on a free port.

The code under test talks HTTP to it through boto3, as it would to AWS or MinIO;
nothing in the client is replaced. Skipped with a visible reason when the
``moto[server]`` package is missing (which fails the run under CI=true).
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from maas.config import Settings

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

REGION = "us-east-1"
ACCESS_KEY = "maas-test"
SECRET_KEY = "maas-test-secret"  # moto accepts any credentials


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def moto_server() -> Iterator[str]:
    """Start ``moto_server`` and yield its endpoint URL; stopped afterwards."""
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        pytest.skip("moto[server] not installed (pip install 'moto[server]'): no S3 server")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/moto-api/", timeout=2)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on {url}") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def s3_client(endpoint: str) -> S3Client:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(s3={"addressing_style": "path"}),
    )


def new_bucket(client: S3Client) -> str:
    name = f"maas-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=name)
    return name


def s3_settings(home: Path, endpoint: str, bucket: str, **overrides: Any) -> Settings:
    """Settings of a registry whose blobs live in ``s3://bucket/blobs``."""
    values: dict[str, Any] = {
        "home": home,
        "gc_grace_seconds": 0,
        "artifact_url": f"s3://{bucket}/blobs",
        "s3_endpoint_url": endpoint,
        "s3_region": REGION,
        "s3_access_key_id": ACCESS_KEY,
        "s3_secret_access_key": SECRET_KEY,
        "s3_addressing_style": "path",
        **overrides,
    }
    return Settings(**values)


def s3_env(endpoint: str, bucket: str) -> dict[str, str]:
    """The same store as environment variables, for the CLI and subprocesses."""
    return {
        "MAAS_ARTIFACT_URL": f"s3://{bucket}/blobs",
        "MAAS_S3_ENDPOINT_URL": endpoint,
        "MAAS_S3_REGION": REGION,
        "MAAS_S3_ACCESS_KEY_ID": ACCESS_KEY,
        "MAAS_S3_SECRET_ACCESS_KEY": SECRET_KEY,
        "MAAS_S3_ADDRESSING_STYLE": "path",
    }


def object_keys(client: S3Client, bucket: str, prefix: str = "") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))
