"""Fixtures of the registry tests: a real S3-compatible server (tests/s3.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from maas.config import Settings
from maas.registry.store import Registry
from tests.s3 import moto_server, new_bucket, s3_client, s3_settings

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    yield from moto_server()


@pytest.fixture
def s3(s3_endpoint: str) -> S3Client:
    return s3_client(s3_endpoint)


@pytest.fixture
def bucket(s3: S3Client) -> str:
    return new_bucket(s3)


@pytest.fixture
def s3_store_settings(home: Path, s3_endpoint: str, bucket: str) -> Settings:
    return s3_settings(home, s3_endpoint, bucket)


@pytest.fixture
def s3_registry(s3_store_settings: Settings) -> Iterator[Registry]:
    reg = Registry(s3_store_settings)
    yield reg
    reg.close()
