"""AsyncMaasClient against a real server: the same descriptions, awaited."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from maas.client import AsyncMaasClient
from maas.errors import ConflictError, NotFoundError, UnauthorizedError
from tests.e2e.conftest import LiveServer
from tests.helpers import make_hf_dir

pytestmark = pytest.mark.slow  # a server process and job subprocesses


def test_push_and_download_stream_through_the_async_transport(
    live: LiveServer, tmp_path: Path
) -> None:
    source = make_hf_dir(tmp_path / "hf", seed=1)

    async def main() -> None:
        async with AsyncMaasClient(live.url, live.key) as client:
            sent: list[int] = []
            info = await client.push(
                source, "async-blob", task="text-classification", on_bytes=sent.append
            )
            assert info.ref == "async-blob:1" and sum(sent) > 0
            pulled = await client.download("async-blob", tmp_path / "pulled")
            assert pulled.ref == "async-blob:1"
            got = (tmp_path / "pulled" / "model.safetensors").read_bytes()
            assert got == (source / "model.safetensors").read_bytes()
            assert [v.version for v in await client.list_versions("async-blob")] == [1]
            assert await client.get_routing("async-blob") is None

    anyio.run(main)


def test_a_job_is_followed_and_promoted_from_coroutines(live: LiveServer) -> None:
    async def main() -> None:
        async with AsyncMaasClient(live.url, live.key) as client:
            spec = {"model": "m:1", "sleep": 0.3, "metrics": {"accuracy": 0.95}}
            job = await client.submit_job("selftest", spec, seed=7)
            events: list[dict[str, Any]] = []
            done = await client.follow_job(job["id"], events.append)
            assert done["status"] == "succeeded" and done["seed"] == 7
            assert events and events[-1]["type"] == "progress"
            assert (await client.job_report(job["id"]))["seed"] == 7
            ref = done["result_ref"]
            assert ref is not None
            with pytest.raises(ConflictError):
                await client.promote(ref, "canary", ["accuracy>=0.99"])
            promoted = await client.promote(ref, "canary", ["accuracy>=0.9"])
            assert promoted["alias"] == "canary"

    anyio.run(main)


def test_calls_run_concurrently_on_one_client(live: LiveServer) -> None:
    """Several coroutines share one AsyncMaasClient (one connection pool)."""
    found: dict[str, Any] = {}

    async def fetch(client: AsyncMaasClient, name: str) -> None:
        if name == "keys":
            found[name] = await client.list_keys()
        elif name == "audit":
            found[name] = await client.verify_audit()
        elif name == "usage":
            found[name] = await client.usage(group_by="status")
        else:
            found[name] = await client.list_jobs(limit=5)

    async def main() -> None:
        async with AsyncMaasClient(live.url, live.key) as client, anyio.create_task_group() as tg:
            for name in ("keys", "audit", "usage", "jobs"):
                tg.start_soon(fetch, client, name)

    anyio.run(main)
    assert found["keys"][0]["name"] == "bootstrap-admin"
    assert found["audit"]["ok"] is True
    assert found["usage"]["group_by"] == "status"
    assert isinstance(found["jobs"], list)


def test_errors_come_back_as_the_servers_types(live: LiveServer) -> None:
    async def main() -> None:
        async with AsyncMaasClient(live.url, live.key) as client:
            with pytest.raises(NotFoundError):
                await client.get_dataset("no-such-dataset")
            with pytest.raises(NotFoundError):
                await client.follow_job("no-such-job")
        async with AsyncMaasClient(live.url, "maas-sk-wrong") as stranger:
            with pytest.raises(UnauthorizedError):
                await stranger.list_models()

    anyio.run(main)
