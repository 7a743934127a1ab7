"""One real `maas serve` per module, with a tiny text classifier registered as ``m:1``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from maas.config import Settings
from maas.registry.store import Registry
from tests.e2e.conftest import LiveServer, start_server
from tests.helpers import make_hf_dir


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("client-home")
    registry = Registry(Settings(home=home))
    try:
        registry.push(make_hf_dir(tmp_path_factory.mktemp("hf")), "m", task="text-classification")
    finally:
        registry.close()
    yield from start_server(home, {"MAAS_JOB_CANCEL_GRACE_SECONDS": "2"})


@pytest.fixture(scope="module")
def reviews_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small labelled CSV: enough rows for a stratified three-way split."""
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    rows = ["text,label"]
    for i in range(30):
        rows.append(f"great product number {i},pos")
        rows.append(f"awful product number {i},neg")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path
