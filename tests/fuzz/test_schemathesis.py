"""Property-based fuzzing of every route in the OpenAPI schema: no input may cause a 5xx.

Schemathesis generates requests (valid and invalid) from the app's own schema.
Bounded (``max_examples`` per operation, derandomized) so CI time stays
predictable; ``MAAS_FUZZ_EXAMPLES`` raises the bound for a deeper local run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402

from maas.api.app import create_app  # noqa: E402
from maas.config import Settings  # noqa: E402
from maas.registry.store import Registry  # noqa: E402
from tests.helpers import make_onnx_file  # noqa: E402

EXAMPLES = int(os.environ.get("MAAS_FUZZ_EXAMPLES", "20"))


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    home = tmp_path_factory.mktemp("fuzz-home")
    registry = Registry(Settings(home=home))
    try:
        onnx_dir = tmp_path_factory.mktemp("fuzz-onnx")
        registry.push(make_onnx_file(onnx_dir / "model.onnx").parent, "x", task="tensor")
    finally:
        registry.close()
    app = create_app(Settings(home=home, gc_grace_seconds=0))
    # The outer client runs the lifespan (app.state); schemathesis' calls reuse it.
    with TestClient(app):
        yield app, (home / "admin.key").read_text().strip()


@pytest.mark.slow
def test_no_input_causes_a_server_error(fuzz_app: tuple[Any, str]) -> None:
    app, key = fuzz_app
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    headers = {"Authorization": f"Bearer {key}"}
    failures: list[str] = []
    operations = 0
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def probe(case: Any) -> None:
            nonlocal calls
            calls += 1
            response = case.call(headers=headers)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: "
                    f"{response.text[:300]}"
                )

        probe()
    assert operations >= 40
    assert calls >= operations * 5  # the bound is per operation; tiny enums give fewer
    assert failures == []
